"""hello: greets whoever asks (the demo's HTTP function)."""

import os


def handler(event, context):
    name = event.get("name") or (event.get("pathParameters") or {}).get("name") or "world"
    context.logger.info("greeting %s", name)
    return {"message": f"{os.environ.get('GREETING', 'hello')} {name}"}
