"""The MTA side of the milter protocol (version 6): rspamd, OpenDKIM, ClamAV and every other
Sendmail/Postfix mail filter, asked by mqmta.

* :mod:`~mqtwisted.milter.protocol` — the packets, as pure functions over bytes;
* :mod:`~mqtwisted.milter.client` — one milter connection on Twisted, with its deadline;
* :mod:`~mqtwisted.milter.macros` — the sendmail macros each step sends;
* :mod:`~mqtwisted.milter.edits` — the message as milters see and change it;
* :mod:`~mqtwisted.milter.chain` — ``--milters``, asked in order through an SMTP session;
* :mod:`~mqtwisted.milter.outbound` — ``--milters-out``, a delivery prepare step.

See docs/architecture.rst for where milters sit, docs/plugins.rst for their order with plugins.
"""
