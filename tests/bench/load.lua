-- wrk script of the HTTP benchmark (tests/bench/main.rs writes its inputs).
-- BENCH_MODE: health | get | list | pages | post | patch
-- BENCH_IDS:  file of "TOKEN TASK_ID" lines (get, patch), "TOKEN CURSOR" lines (pages)
--             or "TOKEN" lines (list, post)
-- BENCH_OUT:  where done() writes the result as one JSON object

local mode = os.getenv("BENCH_MODE")
local ids_file = os.getenv("BENCH_IDS")
local out_file = os.getenv("BENCH_OUT")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local entries = {}
local static_request = nil
local counter = 0

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  if mode == "health" then
    static_request = wrk.format("GET", "/health")
    return
  end
  for line in io.lines(ids_file) do
    local tok, id = line:match("^(%S+) ?(%S*)$")
    if tok then
      entries[#entries + 1] = { tok, id }
    end
  end
end

function request()
  if static_request then
    return static_request
  end
  local e = entries[math.random(#entries)]
  local auth = "Bearer " .. e[1]
  if mode == "get" then
    return wrk.format("GET", "/v1/tasks/" .. e[2], { ["Authorization"] = auth })
  elseif mode == "list" then
    return wrk.format("GET", "/v1/tasks?limit=50", { ["Authorization"] = auth })
  elseif mode == "pages" then
    return wrk.format("GET", "/v1/tasks?limit=50&cursor=" .. e[2], { ["Authorization"] = auth })
  elseif mode == "post" then
    counter = counter + 1
    local body = '{"title":"bench task ' .. counter .. '","priority":"high","tags":["bench","load"]}'
    return wrk.format("POST", "/v1/tasks", { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body)
  elseif mode == "patch" then
    counter = counter + 1
    -- A new title every time, so every PATCH really writes a new version.
    local body = '{"title":"patched ' .. (tid or 0) .. "-" .. counter .. '"}'
    return wrk.format("PATCH", "/v1/tasks/" .. e[2],
      { ["Authorization"] = auth, ["Content-Type"] = "application/merge-patch+json" }, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(out_file, "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
  f:close()
end
