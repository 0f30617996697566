def handler(event, context=None):
    return {"echo": event}
