"""mqtwisted: mqmta, a mail transfer agent on Twisted with MailerQ's plugin API and queue model."""

__version__ = "0.1.0"
