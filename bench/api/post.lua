-- wrk script of bench/api/run: POST /api/events/bench.notify over keep-alive
-- connections, to 100 rooms in turn. WSS_BENCH_DELAY_MS > 0 paces each connection
-- (a fixed offered rate instead of as fast as possible).
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WSS_BENCH_SECRET") or "")
wrk.headers["Content-Type"] = "application/json"

local n = 0
request = function()
  n = n + 1
  local body = string.format('{"room":"r%d","text":"order %d shipped"}', n % 100, n)
  return wrk.format(nil, "/api/events/bench.notify", nil, body)
end

local pace = tonumber(os.getenv("WSS_BENCH_DELAY_MS") or "0")
if pace > 0 then
  delay = function() return pace end
end

-- wrk counts answers with a status above 399 in `errors.status` (reported as non4xx5xx
-- below); the API answers 200 or an error status, never another 2xx or a 3xx.
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non_ok=%d errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
