use cache_runtime::cached;

const NEVER: u64 = 0;
const SMALL: u32 = 60;

// A constant of zero seconds: refused at compile time, like `expire = 0`.
#[cached(expire = NEVER)]
async fn zero(id: u64) -> u64 {
    id
}

// A constant of another integer type: the compiler says which type is expected.
#[cached(expire = SMALL)]
async fn small(id: u64) -> u64 {
    id
}

// Not a number of seconds.
#[cached(expire = "60")]
async fn text(id: u64) -> u64 {
    id
}

fn main() {}
