// The stripe-sync-engine peer (bench/sse_peer.py runs it): the engine's
// processWebhook behind Node's own HTTP server, one POST = verify + apply in
// the request (it keeps no durable event log), the way its Fastify app serves it.
import http from "node:http";
import { createRequire } from "node:module";

// Its ES module build looks up its migrations with __dirname, which ES modules
// lack: the CommonJS build is the one that works.
const { StripeSync, runMigrations } = createRequire(import.meta.url)("@supabase/stripe-sync-engine");

const url = process.env.BENCH_PEER_DSN;
const quiet = { info() {}, warn() {}, error: console.error, debug() {}, trace() {}, fatal: console.error, child() { return quiet; } };
await runMigrations({ databaseUrl: url, schema: "stripe", logger: quiet });
const sync = new StripeSync({
  poolConfig: { connectionString: url, max: 10 },
  stripeSecretKey: "sk_test_bench",
  stripeWebhookSecret: process.env.BENCH_WEBHOOK_SECRET,
  backfillRelatedEntities: false,
  logger: quiet,
});
const ok = '{"received":true}';
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    try {
      await sync.processWebhook(Buffer.concat(chunks), req.headers["stripe-signature"]);
      res.writeHead(200, { "content-type": "application/json", "content-length": ok.length });
      res.end(ok);
    } catch (err) {
      const body = String(err && err.message);
      res.writeHead(400, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
      res.end(body);
    }
  });
});
server.keepAliveTimeout = 75_000;
server.listen(Number(process.env.BENCH_PEER_PORT), "127.0.0.1", () =>
  console.log("stripe-sync-engine ready"),
);
