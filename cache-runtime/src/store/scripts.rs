//! The Lua scripts of the Redis store: fill, key invalidation, version bump and read, claim; how
//! one is called (`evalsha`) and the Rust side of their rule for a version (`parse_version`).

/// `EVALSHA` of `script` with `keys` keys: the caller adds the keys, then the arguments
/// (`Cmd::arg` copies each once; redis-rs's `ScriptInvocation` copies each twice). Run with
/// [`RedisStore::invoke`](super::RedisStore::invoke).
pub(crate) fn evalsha(script: &redis::Script, keys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
}

/// A version as the scripts accept one (at most 16 digits, below 9,007,199,254,740,000: exact
/// in Lua's numbers); anything else is `None` (absent, or damaged: repaired before a fill).
pub(super) fn parse_version(raw: Option<&Vec<u8>>) -> Option<u64> {
    let raw = raw?;
    if raw.is_empty() || raw.len() > 16 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok().filter(|&v: &u64| v < 9_007_199_254_740_000)
}

/// What every script takes for a version (a generation, the generation counter, a tag or
/// namespace version): at most 16 digits and below 9,007,199,254,740,000 (exact in Lua's
/// numbers), as `parse_version` does on the Rust side. Anything else is damage.
macro_rules! version_rule {
    () => {
        r"
local function version(v)
  return type(v) == 'string' and string.match(v, '^%d+$') ~= nil and #v <= 16 and tonumber(v) < 9007199254740000
end
"
    };
}

/// The start of a script whose `KEYS[1]` is the generation counter (see `RedisStore`'s docs:
/// the prefix's on one server, the entry's own generation on a cluster) and whose `ARGV[1]`
/// is a fresh version: `e` becomes the counter moved on, remembered for a day. An absent
/// counter (evicted, expired) or one that is not a version (a foreign value or type) starts
/// again at the fresh version, above every value handed out before: a lease read before is
/// refused all the same. The script starts with [`version_rule`].
macro_rules! next_generation {
    () => {
        r"
local e = redis.pcall('GET', KEYS[1])
if version(e) then
  e = redis.call('INCR', KEYS[1])
else
  e = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], 86400000)
"
    };
}

/// `KEYS`: the generation counter, then pairs of an entry and its generation (on a cluster a call
/// carries one pair, and its generation is the counter: one hash slot). `ARGV`: a fresh version,
/// then per pair the counter the read saw (`''` = absent: 0), the envelope, the ttl in ms.
/// Stores each entry whose key was not invalidated since its read (its generation, the counter
/// at its last invalidation, is absent or not above what the read saw; on a cluster, still
/// exactly what the read saw); returns a list of 1 (stored) or 0. Tags and namespaces are not
/// checked here but on read (the entry records their versions), so a call never crosses a Redis
/// Cluster slot. A generation holding anything but a
/// version (a foreign string, another type) is repaired with the counter moved on, which no
/// read can have seen: that fill is dropped, the next read's fill succeeds. A refused fill
/// raises the counter to the generation if it is below (a counter started again after damage),
/// so that the counter is never below a generation for long. While the counter is still what
/// a read saw, no key was invalidated since: its fill is stored without reading its generation
/// (one `GET` for a batch's fills, not one each). A batch's fills on one Redis are one call
/// (one script run, not one each).
pub(super) const FILL: &str = concat!(
    version_rule!(),
    r"
local stored = {}
local counter = redis.pcall('GET', KEYS[1])
for i = 1, (#KEYS - 1) / 2 do
  local entry, generation, seen = KEYS[2 * i], KEYS[2 * i + 1], ARGV[3 * i - 1]
  stored[i] = 0
  -- No closure per pair (one per pair cost ~0.4 us of server time each).
  local store = type(counter) == 'string' and counter == seen
  if not store then
    local g = redis.pcall('GET', generation)
    if g and not version(g) then
",
    next_generation!(),
    r"
      redis.call('SET', generation, e, 'PX', 86400000)
    elseif KEYS[1] == generation then
      -- A cluster's generation is its own counter: stored only while it is what the read saw.
      store = (g or '') == seen
    elseif tonumber(g or '0') <= (tonumber(seen) or 0) then
      store = true
    else
      -- Invalidated since the read, or the counter started again below this generation (damaged
      -- or lost, and its fresh start not above it): the counter is raised to it, so that the
      -- next read's fill is not refused for good.
      local now = redis.pcall('GET', KEYS[1])
      if not version(now) or tonumber(now) < tonumber(g) then
        redis.call('SET', KEYS[1], g, 'PX', 86400000)
      end
    end
  end
  if store then
    redis.call('SET', entry, ARGV[3 * i], 'PX', ARGV[3 * i + 1])
    stored[i] = 1
  end
end
return stored
"
);

/// The start of a script whose `KEYS` are the generation counter, an entry and its generation,
/// and whose `ARGV[1]` is a fresh version: moves the counter on ([`next_generation`]) and
/// records it as the entry's generation (for a day), so that every fill leased before is
/// refused.
macro_rules! invalidation {
    () => {
        concat!(next_generation!(), "redis.call('SET', KEYS[3], e, 'PX', 86400000)\n")
    };
}

/// `KEYS`: the generation counter, an entry, its generation. `ARGV`: a fresh version. Moves the
/// generation on and drops the entry.
pub(super) const INVALIDATE_KEY: &str =
    concat!(version_rule!(), invalidation!(), "return redis.call('UNLINK', KEYS[2])\n");

/// `KEYS`: the generation counter, an entry, its generation. `ARGV`: a fresh version, the
/// bytes, the ttl in ms. The plain API's `set`: stores the entry and moves its generation on
/// as [`INVALIDATE_KEY`] does, so a fill whose lease was taken before the set (a slow read of
/// older data) is refused.
pub(super) const SET_KEY: &str =
    concat!(version_rule!(), invalidation!(), "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\nreturn 1\n");

/// How long a tag (or namespace, or key) version is kept after it was last created or bumped,
/// in ms (30 days): every version key expires, so versions never pile up, and under a
/// `volatile-*` policy Redis may evict them. A version that expired is created again at a
/// fresh start, which no entry can have recorded: the entries that recorded the old one read
/// as misses, never as hits.
pub(super) const VERSION_TTL_MS: u64 = 30 * 86_400_000;

/// `KEYS`: a tag (or namespace, or key) version. `ARGV`: a fresh start
/// ([`fresh_version`](super::fresh_version)), [`VERSION_TTL_MS`], and `known` to bump only a
/// version that exists. `INCR`s the version and returns it. An absent version (evicted, expired)
/// or one that is not a version (a foreign value or type) is replaced by the fresh start: no
/// entry can have recorded it, and it is above every version the replicas' L1s learned before
/// (they keep the highest they saw). With `known`, an absent one stays absent (returns 0):
/// nothing current recorded it (a key's implicit tag, bumped by every key invalidation).
pub(super) const BUMP: &str = concat!(
    version_rule!(),
    r"
local v = redis.pcall('GET', KEYS[1])
if version(v) then
  v = redis.call('INCR', KEYS[1])
elseif ARGV[3] == 'known' and not v then
  return 0
else
  redis.call('SET', KEYS[1], ARGV[1])
  v = tonumber(ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
"
);

/// `KEYS`: a tag (or namespace, or key) version. `ARGV`: a fresh start
/// ([`fresh_version`](super::fresh_version)), [`VERSION_TTL_MS`]. Returns the current version,
/// giving an absent one the fresh start (a version key lost to eviction must not come back as
/// a value some old entry recorded) and replacing one that is not a version (a foreign value
/// or type) the same way.
pub(super) const TAG_VERSION: &str = concat!(
    version_rule!(),
    r"
local v = redis.pcall('GET', KEYS[1])
if version(v) then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"
);

/// `KEYS`: a claim (a `lock` or a refresh claim). `ARGV`: the token, the hold in ms. `SET NX
/// PX`; a claim key without an expiry is not one of ours (every claim has one): it is replaced,
/// so a foreign value can never block the claim for good. Returns 1 when claimed.
pub(super) const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";
