"""Long documents as asynchronous jobs: the queue (SAQ over Redis) beside the request path."""
