"""Uses a dependency installed from requirements.txt."""

import tinydep


def handler(event):
    return {"shout": tinydep.shout(event.get("text", "hi")), "from": tinydep.__file__}
