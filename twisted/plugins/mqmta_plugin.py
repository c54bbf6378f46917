"""``twistd mqmta``: the IServiceMaker for the mqmta mail transfer agent."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class MQMTAServiceMaker:
    tapname = "mqmta"
    description = "mqmta: mail transfer agent with MailerQ's plugin API and queue model"

    @property
    def options(self):  # type: ignore[no-untyped-def]
        # Imported lazily: twistd imports every plugin file just to list them.
        from mqtwisted.options import MQOptions

        return MQOptions

    def makeService(self, options):  # type: ignore[no-untyped-def]
        from mqtwisted.service import make_service

        return make_service(options, signals=True)


serviceMaker = MQMTAServiceMaker()
