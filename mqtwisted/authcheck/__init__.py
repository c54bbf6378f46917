"""Inbound authentication results (``--verify-inbound on``): SPF, DKIM, ARC and DMARC of each
arriving message, recorded in its documents' ``auth`` property and in an
``Authentication-Results:`` header field (RFC 8601) naming this MTA.

Well-kept libraries do the work: pyspf (SPF), dkimpy (DKIM and ARC), ``dmarc`` (DMARC records
and alignment), ``publicsuffixlist`` (organizational domains), authres (the header's syntax).
Their DNS questions go through the resolver ``--dns-server`` names (:mod:`.lookups`).  The
checks block, so they run in a thread (:mod:`.verifier`, the entry point); cleanup asks for them
before it makes the documents and puts the header on with :mod:`.header` (docs/architecture.rst).

The package imports nothing itself: cleanup loads only :mod:`.header`, and the libraries load
only when verification is on.
"""
