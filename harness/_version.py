"""The harness's version, in a module of its own: modules that :mod:`harness` itself imports
(the record writer stamps it into every manifest) read it here, so that the package and its
modules never import each other."""

__version__ = "0.1.0"
