//! The Lua scripts that change a room in Redis. Each runs atomically, so a join, a leave or a
//! reap and the events telling the nodes about it form one step that every node sees in the
//! same order (Redis delivers each subscriber's messages in the order they were published).
//!
//! Times come from Redis (`TIME`), never from a node's clock. `sotto:boot` records when this
//! Redis first served a node: for 4 s after a restart, while the nodes put back what it lost,
//! no member is reaped for a missing node key.

/// Shared by the scripts: `now` in ms, whether reaping is allowed, and a publisher of one event
/// to every node with members in a list of records.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local boot = tonumber(redis.call('GET', 'sotto:boot') or '')
if not boot then
  redis.call('SET', 'sotto:boot', now)
  boot = now
end
local settled = now - boot >= 4000
local function publish_to(nodes, event)
  for node, _ in pairs(nodes) do
    redis.call('PUBLISH', 'sotto:n:' .. node, event)
  end
end
local function left_event(room, id)
  return '{"t":"l","r":' .. cjson.encode(room) .. ',"id":' .. cjson.encode(id) .. '}'
end
"#;

/// KEYS: the room's hash. ARGV: id, name, skeleton, node, token hash, max peers, max slots,
/// room, group member (`1` or `0`). Returns the slot, or the refusal's error code (`room_full`, `token_in_use`,
/// `name_taken`, `id_taken`), or `retry` when the joiner's node is not subscribed. Members of
/// dead nodes are reaped first.
pub(crate) const JOIN_BODY: &str = r#"
local key = KEYS[1]
local id, name, skel, node, tok = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_peers, max_slots, room = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local grp = ARGV[9] == '1'
local all = redis.call('HGETALL', key)
local raws, used, nodes, reaped = {}, {}, {}, {}
local refusal = nil
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if settled and redis.call('EXISTS', 'sotto:node:' .. rec.node) == 0 then
    redis.call('HDEL', key, all[i])
    reaped[#reaped + 1] = all[i]
  else
    raws[#raws + 1] = all[i + 1]
    used[rec.slot] = true
    nodes[rec.node] = true
    if all[i] == id then refusal = refusal or 'id_taken' end
    if tok ~= '' and rec.tok == tok then refusal = refusal or 'token_in_use' end
    if rec.skel == skel then refusal = refusal or 'name_taken' end
  end
end
local slot = nil
for s = 0, max_slots - 1 do
  if not used[s] then slot = s break end
end
if #raws >= max_peers or slot == nil then refusal = 'room_full' end
if refusal == nil then nodes[node] = true end
for _, gone in ipairs(reaped) do publish_to(nodes, left_event(room, gone)) end
if refusal ~= nil then
  if #raws == 0 then redis.call('DEL', key) end
  return refusal
end
local rec = cjson.encode({id = id, name = name, skel = skel, slot = slot, node = node, tok = tok, grp = grp})
local head = '{"t":"j","r":' .. cjson.encode(room) .. ',"m":' .. rec
-- The joiner's node first: if it is not subscribed (it is reconnecting to Redis), it would
-- never complete the join, so nothing changes and the node tries again.
if redis.call('PUBLISH', 'sotto:n:' .. node, head .. ',"roster":[' .. table.concat(raws, ',') .. ']}') == 0 then
  if #raws == 0 then redis.call('DEL', key) end
  return 'retry'
end
redis.call('HSET', key, id, rec)
redis.call('PEXPIRE', key, 120000)
local others = head .. '}'
for n, _ in pairs(nodes) do
  if n ~= node then redis.call('PUBLISH', 'sotto:n:' .. n, others) end
end
return slot
"#;

/// KEYS: the room's hash. ARGV: id, room. Removes the member and tells the nodes left.
pub(crate) const LEAVE_BODY: &str = r#"
local key = KEYS[1]
if redis.call('HDEL', key, ARGV[1]) == 0 then return 0 end
local vals = redis.call('HVALS', key)
if #vals == 0 then
  redis.call('DEL', key)
  return 1
end
local nodes = {}
for _, raw in ipairs(vals) do nodes[cjson.decode(raw).node] = true end
publish_to(nodes, left_event(ARGV[2], ARGV[1]))
return 1
"#;

/// KEYS: the room's hash. ARGV: a node, room. If the node's key is gone (and Redis has been
/// up long enough for live nodes to have put it back), removes its members and tells the
/// nodes left. Returns how many were removed.
pub(crate) const REAP_BODY: &str = r#"
local key = KEYS[1]
local dead = ARGV[1]
if not settled or redis.call('EXISTS', 'sotto:node:' .. dead) == 1 then return 0 end
local all = redis.call('HGETALL', key)
local nodes, gone = {}, {}
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.node == dead then
    redis.call('HDEL', key, all[i])
    gone[#gone + 1] = all[i]
  else
    nodes[rec.node] = true
  end
end
if #gone == #all / 2 then redis.call('DEL', key) end
for _, id in ipairs(gone) do publish_to(nodes, left_event(ARGV[2], id)) end
return #gone
"#;

/// KEYS: the room's hash. ARGV: room, then the records of this node's members. Puts back the
/// members Redis lost (a restart), refusing those whose slot or name another member now
/// holds, then sends every node in the room the whole roster. Returns the refused ids.
pub(crate) const RESTORE_BODY: &str = r#"
local key = KEYS[1]
local room = ARGV[1]
local conflicts = {}
for i = 2, #ARGV do
  local rec = cjson.decode(ARGV[i])
  if redis.call('HEXISTS', key, rec.id) == 0 then
    local clash = false
    for _, raw in ipairs(redis.call('HVALS', key)) do
      local other = cjson.decode(raw)
      if other.slot == rec.slot or other.skel == rec.skel then clash = true end
    end
    if clash then
      conflicts[#conflicts + 1] = rec.id
    else
      redis.call('HSET', key, rec.id, ARGV[i])
    end
  end
end
local vals = redis.call('HVALS', key)
if #vals > 0 then
  redis.call('PEXPIRE', key, 120000)
  local nodes = {}
  for _, raw in ipairs(vals) do nodes[cjson.decode(raw).node] = true end
  publish_to(nodes, '{"t":"roster","r":' .. cjson.encode(room) .. ',"members":[' .. table.concat(vals, ',') .. ']}')
end
return conflicts
"#;

/// KEYS: the node's key. ARGV: its load (JSON), lifetime in ms. Returns ms since boot.
pub(crate) const HEARTBEAT_BODY: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return now - boot
"#;

/// A script's full text: the prelude, then `body`.
pub(crate) fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}
