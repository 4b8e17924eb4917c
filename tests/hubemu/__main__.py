"""`python -m tests.hubemu [--port 0] [--cdn-port 0] [--lifetime 3600]`: serve the demo Hub until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .demo import DEMO_TOKEN, DEMO_USER, populate_demo
from .hub import HubEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hubemu", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port on 127.0.0.1 (0 = any free port)")
    parser.add_argument(
        "--lifetime", type=float, default=3600.0, help="stop by itself after this many seconds"
    )
    args = parser.parse_args(argv)

    hub = HubEmulator(max_lifetime=args.lifetime, port=args.port, cdn_port=args.cdn_port)
    populate_demo(hub)
    hub.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"HF_ENDPOINT={hub.url}")
    print(f"HF_TOKEN={DEMO_TOKEN}  # user '{DEMO_USER}', has accepted demo/gated-model")
    print(
        f"# CDN (LFS bytes) at {hub.cdn_url}; repos: demo/tiny-model (tag v1.0), "
        "datasets/demo/tiny-dataset, demo/gated-model (gated=manual)",
        flush=True,
    )
    try:
        done.wait(args.lifetime)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
