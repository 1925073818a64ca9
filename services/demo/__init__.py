"""The demo of the whole loop (`make demo`) and the tooling it shares with the
end-to-end test and `bench/closed_loop.py`: a drifting stream and an observer that
narrates the loop (the six service processes are supervised by services.devstack.supervisor)."""
