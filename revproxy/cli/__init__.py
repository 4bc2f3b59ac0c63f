"""The commands a person types: run, check, reload, ctl, cert, version; the demo.

Rule of this part: nothing imports it. A command parses its arguments, calls the parts below
and turns their errors into a message and an exit status (2 for a bad configuration)."""
