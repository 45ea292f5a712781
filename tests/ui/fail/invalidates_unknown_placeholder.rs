use cache_runtime::invalidates;

#[invalidates(key = "user:<user_id>", tags = ["team:<team>"])]
async fn rename(id: u64, name: String) -> Result<(), String> {
    let _ = (id, name);
    Ok(())
}

fn main() {}
