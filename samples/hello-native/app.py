"""hello-native: the smallest useful estarter app."""

from sdk import EStarterClient


def main() -> int:
    with EStarterClient.connect() as client:
        pong = client.system.ping()
        now = client.system.time()
        client.log("info", f"ping answered: {pong['pong']}, kernel time {now} ms")
        client.ui.notify("Hello from estarter", "hello-native is running in its sandbox")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
