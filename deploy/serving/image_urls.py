"""Images named by URL in a request (the service's --allow_image_urls). A URL lets a client
make the server connect somewhere, so only what cannot reach the server's own network
is fetched:
- http and https only (no file:, ftp:, data: ...);
- the host is resolved once and every address it resolves to must be public (not
  loopback, private, link-local, shared, multicast, reserved or unspecified); the
  connection then goes to the checked address, so a second lookup cannot swap it
  (DNS rebinding), and no proxy from the environment is used;
- redirects are followed by hand, at most MAX_REDIRECTS, each target checked the same way;
- the body is read up to `max_bytes` (a Content-Length over it is refused unread) and
  the whole fetch, redirects included, within `timeout` seconds.
"""

import http.client
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse

MAX_REDIRECTS = 3
CHUNK = 64 * 1024
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # base64 text never has a colon


class ImageURLError(ValueError):
    """A URL the service does not fetch, or a fetch that failed: said in one line."""


def looks_like_url(text):
    return bool(_SCHEME.match(text))


def is_public_address(address):
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index names an interface
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def fetch_image(url, max_bytes, timeout, address_allowed=is_public_address):
    """The bytes at `url` (see the module's docstring), or an ImageURLError."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        target = checked_target(url, address_allowed, deadline)
        connection = _connection(*target, remaining(deadline, timeout))
        try:
            connection.request("GET", target_path(url), headers={
                "Host": urllib.parse.urlsplit(url).netloc.rpartition("@")[2],
                "User-Agent": "ppcls-serving", "Accept": "image/*"})
            answer = connection.getresponse()
            if answer.status in (301, 302, 303, 307, 308) and answer.getheader("Location"):
                url = urllib.parse.urljoin(url, answer.getheader("Location"))
                continue
            if answer.status != 200:
                raise ImageURLError(f"the image URL answered HTTP {answer.status} {answer.reason}")
            return read_bounded(answer, connection, max_bytes, deadline, timeout)
        except (OSError, http.client.HTTPException) as err:
            if isinstance(err, TimeoutError) or time.monotonic() > deadline:
                raise ImageURLError(f"the image URL did not answer within {timeout:g} s") from None
            raise ImageURLError(f"the image URL could not be fetched ({type(err).__name__}: "
                                f"{str(err)[:120]})") from None
        finally:
            connection.close()
    raise ImageURLError(f"the image URL redirected more than {MAX_REDIRECTS} times")


def checked_target(url, address_allowed, deadline):
    """(scheme, host, checked address, port) of a URL the rules allow."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ImageURLError(f"not a valid URL ({err})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageURLError(f"URLs of scheme {parts.scheme!r} are not fetched: only http and https")
    if not parts.hostname:
        raise ImageURLError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise ImageURLError("URLs with credentials are not fetched")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ImageURLError(f"the URL's host {parts.hostname!r} does not resolve ({err})") from None
    if time.monotonic() > deadline:
        raise ImageURLError("resolving the URL's host took too long")
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        if not address_allowed(address):
            raise ImageURLError(f"the URL's host {parts.hostname!r} resolves to {address}, which is "
                                "not a public address")
    return parts.scheme.lower(), parts.hostname, addresses[0], port


def target_path(url):
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def remaining(deadline, timeout):
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageURLError(f"the image URL did not answer within {timeout:g} s")
    return left


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address checked_target approved, not to a fresh lookup of the host."""

    def __init__(self, address, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        # kept: http.client forgets self.sock once a response that closes the connection starts
        self.pinned = self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, address, host, port, timeout):
        self.tls = ssl.create_default_context()  # the host's certificate is verified
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.pinned = self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def _connection(scheme, host, address, port, timeout):
    kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return kind(address, host, port, timeout)


def read_bounded(answer, connection, max_bytes, deadline, timeout):
    """The body, one socket read at a time, each allowed only the time left."""
    length = answer.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ImageURLError(f"the image at the URL is {int(length)} bytes, over the limit of "
                            f"{max_bytes} (serve.py --url_max_mb)")
    chunks, size = [], 0
    while True:
        connection.pinned.settimeout(remaining(deadline, timeout))
        chunk = answer.read1(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ImageURLError(f"the image at the URL is over the limit of {max_bytes} bytes "
                                "(serve.py --url_max_mb)")
        chunks.append(chunk)
