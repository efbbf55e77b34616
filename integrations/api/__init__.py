"""The integration API (`/api/v1/`): the agency's own systems use a person's connection and
mirror with an API key, without handling OAuth, refresh or profiles themselves.

`keys` issues and checks keys (authentication, scopes, throttling), `problems` turns every
error into `application/problem+json`, `records` renders mirror rows, `views` holds the
endpoints over the connection and the mirror, `proxy` the profiled proxy to Zywave's API,
`webhooks` the endpoints over webhook subscriptions and their delivery logs.
"""
