use std::collections::HashMap;

use cache_runtime::cached;

// No key: a batch needs a template whose placeholder stands for one element.
#[cached(batch)]
async fn no_key(ids: Vec<u64>) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, id.to_string())).collect()
}

// No collection parameter at all.
#[cached(key = "user:<id>", batch)]
async fn no_batch(id: u64) -> HashMap<u64, String> {
    HashMap::from([(id, id.to_string())])
}

// Two batch parameters named in the key.
#[cached(key = "pair:<left>:<right>", batch)]
async fn two(left: Vec<u64>, right: Vec<u64>) -> HashMap<u64, String> {
    left.into_iter().chain(right).map(|id| (id, id.to_string())).collect()
}

// Not a map of the elements.
#[cached(key = "user:<ids>", batch)]
async fn not_a_map(ids: Vec<u64>) -> Vec<String> {
    ids.into_iter().map(|id| id.to_string()).collect()
}

// A map of another key type than the elements'.
#[cached(key = "user:<ids>", batch)]
async fn other_key(ids: Vec<u64>) -> HashMap<String, String> {
    ids.into_iter().map(|id| (id.to_string(), id.to_string())).collect()
}

type AppResult<T> = Result<T, String>;
type Names = Vec<String>;

// Behind aliases, the type decides: a `Result` of a list is no map, nor is a list.
#[cached(key = "user:<ids>", batch)]
async fn result_alias_of_a_list(ids: Vec<u64>) -> AppResult<Vec<String>> {
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}

#[cached(key = "user:<ids>", batch)]
async fn alias_of_a_list(ids: Vec<u64>) -> Names {
    ids.into_iter().map(|id| id.to_string()).collect()
}

fn main() {}
