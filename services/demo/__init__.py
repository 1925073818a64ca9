"""The demo of the whole loop (`make demo`) and the tooling it shares with the
end-to-end test and `bench/closed_loop.py`: a supervisor for the six service
processes, a drifting stream, and an observer that narrates the loop."""
