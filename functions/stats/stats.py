"""stats: summary statistics of a list of numbers (an async handler)."""

import statistics


async def summarise(event, context):
    values = [float(v) for v in event.get("values", [])]
    if not values:
        return {"count": 0, "mean": None}
    return {"count": len(values), "mean": statistics.fmean(values)}
