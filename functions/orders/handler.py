"""orders: checks an order before it is created and computes its total."""


def validate_order(event):
    order = event.get("order") or {}
    items = order.get("items") or []
    total = sum(float(i.get("price", 0)) * int(i.get("qty", 0)) for i in items)
    valid = bool(items) and all(int(i.get("qty", 0)) > 0 for i in items)
    return {"id": order.get("id"), "total": round(total, 2), "valid": valid}
