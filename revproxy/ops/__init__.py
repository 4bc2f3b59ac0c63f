"""What the data path records for operators: the access log and the request metrics.

Rule of this part: recording never fails a request and never blocks the event loop."""
