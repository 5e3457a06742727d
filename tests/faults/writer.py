"""`python -m tests.faults.writer [--ttl S --renew S] [--stop-at lease|commit] -- CLI ARGS`: the real
`minority-synth` CLI in this process, with two test hooks a fault test needs to make a writer's
timing deterministic.

--ttl/--renew  the lease this writer takes expires after S seconds (renewed every S): the lease
               expiry cells cannot wait the real 60 s.
--stop-at      the process stops itself (SIGSTOP) right after taking its lease, or right after its
               first commit; the test resumes it with SIGCONT once the other writer has had its go.

Nothing else is changed: the CLI, the flow, the lease and the store are the product's own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ttl", type=float)
    p.add_argument("--renew", type=float)
    p.add_argument("--stop-at", choices=("lease", "commit"))
    p.add_argument("cli", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli

    from minority_core.io import lease as lease_module
    from minority_core.io.store import ShardStore

    take = lease_module.Lease._take.__func__

    def _take(cls, store, purpose, ttl_s, renew_every_s):
        lease = take(cls, store, purpose, args.ttl or ttl_s, args.renew or renew_every_s)
        print(f"writer {os.getpid()}: lease {lease.generation} taken", file=sys.stderr, flush=True)
        if args.stop_at == "lease":
            os.kill(os.getpid(), signal.SIGSTOP)
        return lease

    lease_module.Lease._take = classmethod(_take)
    if args.stop_at == "commit":
        commit = ShardStore.commit
        done = []

        def stop_after_first(self, *a, **kw):
            result = commit(self, *a, **kw)
            if not done:
                done.append(1)
                print(f"writer {os.getpid()}: first commit", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
            return result

        ShardStore.commit = stop_after_first

    from minority_synth.cli import main as cli_main

    return cli_main(cli, standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
