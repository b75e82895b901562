"""The Gradio web UI: a front door that turns widgets into A1111 request objects and hands them to the job queue.

No generation logic lives here (see docs/architecture.md): callbacks translate widget values into
`StableDiffusionProcessing*` objects, submit them to `modules.call_queue.queue`, and render what comes back.
Modules: `app` builds the page, `server` serves it, one module per tab, and small shared helpers.
"""
