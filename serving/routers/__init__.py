"""HTTP routers of the gateway, one per resource (health, KServe v2, friendly v1, metrics)."""
