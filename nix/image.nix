# The container image, described by nix/image.json (shared with nix/deploy/build-image.sh, the CI twin).
# `config` is copied verbatim; only the version and revision labels are computed here.
{
  pkgs,
  lib,
  package,
  spec,
  version,
  revision,
}:
let
  # The package's bin/ is linked to /bin by `contents`, and caCertificates provides the bundle at
  # the Debian path: fail evaluation if image.json ever asks for other paths.
  pathsAgree =
    lib.assertMsg (
      spec.binary == "/bin/${package.meta.mainProgram}"
    ) "image.json binary must be /bin/${package.meta.mainProgram}"
    && lib.assertMsg (
      spec.caBundle == "/etc/ssl/certs/ca-certificates.crt"
    ) "image.json caBundle must be /etc/ssl/certs/ca-certificates.crt";

  # /etc/passwd, /etc/group, /etc/nsswitch.conf: the same bytes the CI builder writes.
  rootFiles = lib.mapAttrsToList pkgs.writeTextDir spec.files;
in
assert pathsAgree;
pkgs.dockerTools.buildLayeredImage {
  inherit (spec) name;
  tag = revision;
  # The default, spelled out: a fixed timestamp keeps the image reproducible.
  created = "1970-01-01T00:00:01Z";
  contents = [
    package
    pkgs.dockerTools.caCertificates
  ]
  ++ rootFiles;
  fakeRootCommands = ''
    mkdir -p .${spec.dataDir}
    chown ${toString spec.uid}:${toString spec.gid} .${spec.dataDir}
  '';
  config = spec.config // {
    Labels = spec.config.Labels // {
      "org.opencontainers.image.version" = version;
      "org.opencontainers.image.revision" = revision;
    };
  };
}
