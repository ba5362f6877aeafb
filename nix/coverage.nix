# LCOV coverage of the hermetic test set (same filter as checks.nextest), via cargo-llvm-cov.
# nixpkgs' rustc has no llvm-tools component, so cargo-llvm-cov is pointed at the LLVM that rustc
# was built with (its profiler runtime is enabled on Linux). Result: ./result/coverage (lcov).
{
  pkgs,
  craneLib,
  crate,
}:
let
  llvm = (pkgs.rustc.llvmPackages or pkgs.llvmPackages).llvm;
in
craneLib.cargoNextest (
  crate.commonArgs
  // {
    inherit (crate) cargoArtifacts;
    withLlvmCov = true;
    cargoNextestExtraArgs = "--no-tests=pass -E '${crate.hermeticTests}'";
    LLVM_COV = "${llvm}/bin/llvm-cov";
    LLVM_PROFDATA = "${llvm}/bin/llvm-profdata";
  }
)
