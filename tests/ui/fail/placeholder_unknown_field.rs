use cache_runtime::{cached, invalidates};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Filter {
    genre: String,
    year: u16,
}

// A typo in a field placeholder: rustc's "no field" error, without a fix-it that would replace
// the whole key string by `genre` (on nightly, where spans inside a string exist, it points at
// `genr` and offers `genre` in its place).
#[cached(key = "list:<filter.genr>:<filter.year>")]
async fn list(filter: Filter) -> Vec<String> {
    vec![filter.genre]
}

// The same in a tag and in `#[invalidates]`, and a tuple field that does not exist.
#[invalidates(key = "list:<filter.genre>:<filter.yaer>", tags = ["pair:<pair.2>"])]
async fn refresh(filter: Filter, pair: (u8, u8)) {
    let _ = (filter, pair);
}

fn main() {}
