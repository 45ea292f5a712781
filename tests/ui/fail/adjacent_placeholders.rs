use cache_runtime::cached;

#[cached(key = "<a><b>")]
async fn concat(a: String, b: String) -> String {
    a + &b
}

fn main() {}
