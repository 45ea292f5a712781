use cache_runtime::cached;

#[derive(serde::Serialize)]
struct Page {
    page: u32,
    per_page: u32,
}

struct Wrapper<T>(T);

#[cached(key = "p:<page.page>:<page.per_page>")]
async fn by_field(page: Page) -> Vec<u32> {
    (0..page.per_page).map(|i| page.page * page.per_page + i).collect()
}

#[cached(key = "xy:<x>:<y>")]
async fn tuple((x, y): (u32, u32)) -> u32 {
    x + y
}

#[cached(key = "w:<id>")]
async fn tuple_struct(Wrapper(id): Wrapper<u64>) -> u64 {
    id
}

#[cached]
async fn destructured(Page { page, per_page }: Page, mut extra: u32) -> u32 {
    extra += 1;
    page + per_page + extra
}

#[cached(key = "tuple-field:<t.0>")]
async fn tuple_field(t: (u8, u8)) -> u8 {
    t.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(by_field(Page { page: 1, per_page: 2 }).await, vec![2, 3]);
    assert_eq!(tuple((1, 2)).await, 3);
    assert_eq!(tuple_struct(Wrapper(4)).await, 4);
    assert_eq!(destructured(Page { page: 1, per_page: 2 }, 0).await, 4);
    assert_eq!(tuple_field((5, 6)).await, 5);
}
