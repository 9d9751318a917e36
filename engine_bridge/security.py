"""CURVE security for the bridge: key generation (`worldsim keys DIR`) and a server socket
that accepts only the clients whose public keys are in ``DIR/authorized_clients`` (ZeroMQ's ZAP
authenticator, as in the zguide's Ironhouse pattern)."""

from __future__ import annotations

from pathlib import Path


def setup_curve(ctx, sock, keys: Path):
    """Make ``sock`` a CURVE server whose allowed clients are the public keys in ``keys``/authorized_clients
    (a ZAP authenticator thread on ``ctx``, returned: stop it when the socket closes)."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    secret = keys / "server.key_secret"
    allowed = keys / "authorized_clients"
    if not secret.exists() or not allowed.is_dir():
        raise FileNotFoundError(f"{keys}: expected server.key_secret and authorized_clients/ (run `worldsim keys {keys}`)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    pub, sec = zmq.auth.load_certificate(str(secret))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def generate_keys(directory: str | Path, clients: int = 1) -> dict[str, str]:
    """Server + client CURVE key pairs; client public keys go in ``authorized_clients/``."""
    import shutil

    import zmq.auth

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "authorized_clients").mkdir(exist_ok=True)
    pub, sec = zmq.auth.create_certificates(str(d), "server")
    out = {"server_public": pub, "server_secret": sec}
    for i in range(clients):
        name = "client" if clients == 1 else f"client{i}"
        cp, cs = zmq.auth.create_certificates(str(d), name)
        shutil.copy(cp, d / "authorized_clients" / Path(cp).name)
        out[f"{name}_public"], out[f"{name}_secret"] = cp, cs
    return out
