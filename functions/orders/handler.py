"""orders: checks an order before it is created and computes its total.

Invoked with `{"order": {...}}` it answers `{id, total, valid}`. As the `orders-before-create` data hook it gets
the write's event (`{collection, op, id, before, proposed, caller, depth}`): it refuses an order over the limit
(`context.Abort` → 422 with the reason) and otherwise stores the order with its total.
"""

LIMIT = 10_000


def _total(items):
    return round(sum(float(i.get("price", 0)) * int(i.get("qty", 0)) for i in items), 2)


def validate_order(event, context=None):
    if "proposed" in event:  # beforeCreate on the orders collection
        order = event["proposed"]
        total = _total(order.get("items") or [])
        if total > LIMIT:
            raise context.Abort(f"order total {total} is over the {LIMIT} limit: split it or ask a manager")
        return {**order, "total": total}
    order = event.get("order") or {}
    items = order.get("items") or []
    valid = bool(items) and all(int(i.get("qty", 0)) > 0 for i in items)
    return {"id": order.get("id"), "total": _total(items), "valid": valid}
