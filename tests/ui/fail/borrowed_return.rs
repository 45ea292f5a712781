use cache_runtime::cached;

// A cached value is stored and decoded into a new value: it cannot borrow.
#[cached(expire = 60)]
async fn greeting(id: u64) -> &'static str {
    if id == 0 {
        "hello"
    } else {
        "hi"
    }
}

// What is stored is what is checked: the `Some` of an `Option`, the `Ok` of a `Result`, the
// elements of a collection.
#[cached(expire = 60)]
async fn label(id: u64) -> Option<&'static str> {
    (id > 0).then_some("label")
}

#[cached(expire = 60)]
async fn words(id: u64) -> Result<Vec<&'static str>, String> {
    Ok(vec!["a"; id as usize])
}

// An `Err` is never stored: it may borrow.
#[cached(expire = 60)]
async fn owned(id: u64) -> Result<String, &'static str> {
    if id == 0 {
        return Err("no id");
    }
    Ok(id.to_string())
}

fn main() {}
