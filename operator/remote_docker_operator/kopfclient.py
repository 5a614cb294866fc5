"""kopf's own API client (its watches and Events): the session
kopf would make, with a bounded connection pool.

kopf's default session has an unlimited pool (`TCPConnector(limit=0)`): a burst of BuildJobs
opened one TLS connection per request in flight (196 at once in a burst of 300 in the scale
bench, each with a 256 KiB read buffer) and closed them once idle; their memory was freed, but
the heap stayed at the peak's size, and API Priority and Fairness turned some of those requests
away with 429. A bounded pool keeps the connections few and reused. aiohttp's
`enable_cleanup_closed` also aborts the TLS transports it closes on the CPython versions that
can leak them (before 3.12.8 and 3.13.1, python/cpython#118960; aiohttp knows which, and warns
if asked where none is needed).
"""

from typing import Any

import aiohttp
import aiohttp.connector
import kopf

# kopf holds one connection per watch (BuildJobs, pods, EngineClasses) for as long as the
# watch lasts; the rest carry its patches and Events, a few at a time. A request over the
# limit waits for a free connection instead of opening one more.
CONNECTIONS = 16


async def login(**kwargs: Any) -> kopf.AiohttpSession:
    """kopf's login (the official client's in-cluster config, else the kubeconfig), and the
    same session kopf makes from it, but with a bounded pool that cleans up closed TLS
    transports. kopf calls this again after a 401 and closes the old session itself."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        raise kopf.LoginError("the kubernetes client library is not installed")
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=CONNECTIONS,
            ssl=info.as_ssl_context(),
            enable_cleanup_closed=aiohttp.connector.NEEDS_CLEANUP_CLOSED,
        ),
        headers=info.as_http_headers(),
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )
