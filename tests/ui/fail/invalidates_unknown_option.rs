use cache_runtime::invalidates;

#[invalidates(key = "user:<id>", expire = 60)]
async fn rename(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
