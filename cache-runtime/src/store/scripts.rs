//! The Lua scripts of the Redis store: fill, key invalidation, version bump and read, claim.

/// `KEYS`: pairs of an entry and its generation (each pair in one hash slot; a cluster call
/// carries one pair). `ARGV`: a fresh version, then per pair the generation the read saw (`''`
/// = absent), the envelope, the ttl in ms. Stores each entry whose generation is still the one
/// its read saw; returns a list of 1 (stored) or 0. Tags and namespaces are not checked here but
/// on read (the entry records their versions), so a pair never crosses a Redis Cluster slot. A
/// generation key holding anything but a version (a foreign string, another type) is repaired
/// with the fresh version, which no reader can have seen: that fill is dropped, the next read's
/// fill succeeds. A batch's fills on one Redis are one call (one script run, not one each).
pub(super) const FILL: &str = r"
local stored = {}
for i = 1, #KEYS / 2 do
  local entry, generation = KEYS[2 * i - 1], KEYS[2 * i]
  local g = redis.pcall('GET', generation)
  stored[i] = 0
  if type(g) == 'table' or (g and not string.match(g, '^%d+$')) or (g and #g > 18) then
    redis.call('SET', generation, ARGV[1], 'PX', 86400000)
  elseif (g or '') == ARGV[3 * i - 1] then
    redis.call('SET', entry, ARGV[3 * i], 'PX', ARGV[3 * i + 1])
    stored[i] = 1
  end
end
return stored
";

/// The start of a script whose `KEYS` are an entry and its generation, and whose `ARGV[1]` is a
/// fresh version: bumps the generation (remembered for a day). A generation that cannot be
/// incremented (a foreign value or type) is replaced by the fresh version: the write is applied
/// all the same.
macro_rules! bump_generation {
    () => {
        r"
local g = redis.pcall('INCR', KEYS[2])
if type(g) ~= 'number' or g < 0 or g > 9007199254740991 then
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('PEXPIRE', KEYS[2], 86400000)
"
    };
}

/// `KEYS`: entry, generation. `ARGV`: a fresh version. Bumps the generation and drops the entry.
pub(super) const INVALIDATE_KEY: &str = concat!(bump_generation!(), "return redis.call('UNLINK', KEYS[1])\n");

/// `KEYS`: entry, generation. `ARGV`: a fresh version, the bytes, the ttl in ms. The plain
/// API's `set`: stores the entry and bumps its generation as [`INVALIDATE_KEY`] does, so a fill
/// whose lease was taken before the set (a slow read of older data) is refused.
pub(super) const SET_KEY: &str =
    concat!(bump_generation!(), "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\nreturn 1\n");

/// `KEYS`: a tag (or namespace) version. `ARGV`: a fresh start
/// ([`fresh_version`](super::fresh_version)). `INCR`s the version and returns it. An absent
/// version (evicted) or one that is not a version (a foreign value or type) is replaced by the
/// fresh start: no entry can have recorded it, and it is above every version the replicas' L1s
/// learned before (they keep the highest they saw).
pub(super) const BUMP: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'string' and string.match(v, '^%d+$') and #v <= 16 and tonumber(v) < 9007199254740000 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
";

/// `KEYS`: a tag (or namespace) version. `ARGV`: a fresh start
/// ([`fresh_version`](super::fresh_version)). Returns the current version, giving an absent one
/// the fresh start (a version key lost to eviction must not come back as a value some old entry
/// recorded) and replacing one that is not a version (a foreign value or type) the same way.
pub(super) const TAG_VERSION: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'string' and string.match(v, '^%d+$') and #v <= 16 and tonumber(v) < 9007199254740000 then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

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
