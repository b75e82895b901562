"""Several GPUs and hosts behind one front door, on Ray Serve (`python launch.py --ray`).

The front door is the ordinary server (web UI and `/sdapi/v1`), with one thing replaced at the queue seam:
`call_queue.queue` becomes a `RayJobQueue` (`queue.py`). Its jobs run their front-door part (building the
request, decoding uploads) in this process as always, and when they reach the engine
(`scripts.process_request` / `processing.process_images` ask `queue.offload`) the request object goes to one
replica of a Ray Serve deployment (`replica.py`): a process with the same engine, its own model manager and
one GPU. Progress, live previews, interrupt and skip travel per job (`state.py`, `control.py`); the choice of
replica prefers one that already holds the job's checkpoint (`affinity.py`); a replica that dies mid-job
has its job run again elsewhere once (`queue.py`). `cluster.py` starts or joins the Ray cluster.

Only `cluster.py`, `replica.py`, `control.py` and `affinity.py` import ray; the rest can be read and tested
without it.
"""
