"""The DICOM node beside the scanner: receive, enhance, forward (``scanside serve``)."""

from .journal import Journal, open_journal
from .server import Node, NodeSettings, Peer

__all__ = ["Journal", "Node", "NodeSettings", "Peer", "open_journal"]
