// `namespace` with `key`: does it clear the namespace or name the key's? Issue 27, finding 3:
// `#[invalidates(key = "cart:<user>", namespace = "carts")]` cleared every cart.
use cache_runtime::invalidates;

#[invalidates(key = "cart:<user>", namespace = "carts")]
async fn put_cart(user: String) -> Result<(), String> {
    let _ = user;
    Ok(())
}

// `in_namespace` names the keys' namespace: without keys it names nothing.
#[invalidates(tags = ["carts"], in_namespace = "carts")]
async fn put_carts() -> Result<(), String> {
    Ok(())
}

fn main() {}
