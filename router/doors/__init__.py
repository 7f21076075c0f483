"""Front doors: each turns one client protocol into the canonical request and the unified events
back into that protocol. ``native`` (POST /v1/tasks), ``openai`` (POST /v1/chat/completions),
``anthropic`` (POST /v1/messages), ``zchat`` (POST /api/chat, the Z.AI FastAPI backend contract).
Any door reaches any backend: translation happens twice, door <-> canonical <-> provider.
"""
