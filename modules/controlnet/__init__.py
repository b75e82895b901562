"""ControlNet, T2I-Adapter and IP-Adapter: control models, their preprocessors and the sd-webui-controlnet API."""
