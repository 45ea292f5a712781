use cache_runtime::invalidates;

#[invalidates(key = "user:<id>")]
fn rename(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
