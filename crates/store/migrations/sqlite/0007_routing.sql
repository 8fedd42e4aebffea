-- Routers (issue 16): the router a request named, the alias that served it, why, and how many cascade steps
-- failed their check first.
ALTER TABLE requests ADD COLUMN router TEXT;
ALTER TABLE requests ADD COLUMN routed_to TEXT;
ALTER TABLE requests ADD COLUMN route_reason TEXT;
ALTER TABLE requests ADD COLUMN escalations INTEGER;
CREATE INDEX requests_router_ts ON requests (router, ts_ms);
