use cache_runtime::cached;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Filter {
    tag: String,
}

// A placeholder's value must be `Display`: `Filter` is not (use `<filter.tag>`).
#[cached(key = "posts:<filter>")]
async fn posts(filter: Filter) -> Vec<String> {
    vec![filter.tag]
}

fn main() {}
