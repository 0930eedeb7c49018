// The graphile-worker peer (bench/graphile_peer.py runs it): a worker with two
// tasks, like the procrastinate peer's. `noop` does nothing (the drain); `probe`
// appends "<i> <seconds>" to BENCH_PEER_PROBES the moment it starts, on
// CLOCK_MONOTONIC (process.hrtime), the clock Python's time.monotonic() reads,
// so the harness times COMMIT → start as it times our COMMIT → Stripe request.
import { appendFileSync } from "node:fs";
import { run } from "graphile-worker";

const probes = process.env.BENCH_PEER_PROBES;
const runner = await run({
  connectionString: process.env.BENCH_PEER_DSN,
  concurrency: 10,
  noHandleSignals: false,
  pollInterval: 2000,
  taskList: {
    noop: async () => {},
    probe: async (payload) => {
      const seconds = Number(process.hrtime.bigint()) / 1e9;
      appendFileSync(probes, `${payload.i} ${seconds}\n`);
    },
  },
});
console.log("graphile-worker ready");
await runner.promise;
