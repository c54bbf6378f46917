"""Outbound delivery: the outbox consumed, messages grouped by destination and delivered over
reused connections, every lease settled with its outcome.

* :mod:`~mqtwisted.delivery.options`: the settings and the MTA options they come from;
* :mod:`~mqtwisted.delivery.service`: the service, its life cycle and the intake of documents;
* :mod:`~mqtwisted.delivery.connections`: destinations and the connections serving them;
* :mod:`~mqtwisted.delivery.outcomes`: what each outcome publishes (results, retries, DSNs);
* :mod:`~mqtwisted.delivery.headers`: the ``headers`` edits made on the wire.
* :mod:`~mqtwisted.delivery.signing`: each message's last step before MAIL FROM (edits, signing).
"""

from mqtwisted.delivery.headers import edit_headers
from mqtwisted.delivery.options import DeliveryOptions
from mqtwisted.delivery.service import DeliveryService, make_delivery_service

__all__ = ["DeliveryOptions", "DeliveryService", "edit_headers", "make_delivery_service"]
