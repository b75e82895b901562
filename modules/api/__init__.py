"""A1111's HTTP API (`/sdapi/v1/*` and the `/internal/*` routes), a thin front door over `modules.processing`.

Routes translate and validate requests, then submit them to the one job queue (`modules.call_queue`) that the
web UI also uses; no generation logic lives here. `server.create_app()` serves the API alone (`--nowebui`),
`server.mount(app)` adds it to the UI's FastAPI app (`--api`).
"""
