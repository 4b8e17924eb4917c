"""The HTTP layer: connections (`connection`), proxy routes (`proxies`), the retry policy (`retry`)
and the run's `Http` session (`session`), on the standard library's http.client."""
