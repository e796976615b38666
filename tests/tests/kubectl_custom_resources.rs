//! CustomResourceDefinitions with the real kubectl: the CronTab of the Kubernetes docs'
//! "Extend the Kubernetes API with CustomResourceDefinitions", applied, printed with its
//! columns, explained, scaled, validated, and deleted with its objects.

use std::time::Duration;

use skiff_e2e::ControlPlane;
use skiff_test_support::wait::wait_until;

const CRONTAB_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Spec
      type: string
      description: The cron spec defining the interval a CronJob is run
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the CronTab runs and when.
            properties:
              cronSpec:
                type: string
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
                description: The image the CronTab runs.
              replicas:
                type: integer
                minimum: 1
                maximum: 10
                default: 1
          status:
            type: object
            properties:
              replicas:
                type: integer
"#;

const MY_CRONTAB: &str = "apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: my-new-cron-object
spec:
  cronSpec: '* * * * */5'
  image: my-awesome-cron-image
";

#[test]
fn kubectl_applies_prints_explains_scales_and_deletes_custom_resources() {
    let cp = ControlPlane::start();
    assert_eq!(
        cp.kubectl_stdin(&["apply", "-f", "-"], Some(CRONTAB_CRD))
            .trim(),
        "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created"
    );
    cp.kubectl(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout=30s",
    ]);
    // kubectl's discovery cache may predate the definition; it refreshes on a miss.
    let created = wait_until(
        "kubectl to know the CronTab kind",
        Duration::from_secs(30),
        || {
            let out = cp.kubectl_output(&["apply", "-f", "-"], Some(MY_CRONTAB));
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(
        created.trim(),
        "crontab.stable.example.com/my-new-cron-object created"
    );

    // Discovery (kubectl asks for the aggregated form) lists it with its names.
    let resources = cp.kubectl(&["api-resources", "--api-group=stable.example.com"]);
    let row: Vec<&str> = resources
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["crontabs", "ct", "stable.example.com/v1", "true", "CronTab"],
        "{resources}"
    );

    // The printer columns, by plural, singular and short name; the default applied.
    let table = cp.kubectl(&["get", "ct"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("my-new-cron-object") && row.contains("* * * * */5") && row.contains(" 1 "),
        "{table}"
    );
    assert!(cp
        .kubectl(&["get", "crontab"])
        .contains("my-new-cron-object"));
    assert!(cp
        .kubectl(&["get", "all"])
        .contains("crontab.stable.example.com/my-new-cron-object"));

    // kubectl explain reads the published schema.
    let explained = cp.kubectl(&["explain", "crontab.spec"]);
    assert!(
        explained.contains("What the CronTab runs and when."),
        "{explained}"
    );
    assert!(explained.contains("cronSpec"), "{explained}");

    // Bad input: the schema's causes, nothing stored.
    let bad = MY_CRONTAB
        .replace("my-new-cron-object", "bad")
        .replace("'* * * * */5'", "'every minute'");
    let err = cp.kubectl_fails(&["apply", "-f", "-"], Some(&bad));
    assert!(err.contains("spec.cronSpec in body should match"), "{err}");
    assert!(cp
        .kubectl_fails(&["get", "crontab", "bad"], None)
        .contains("not found"));

    // /scale.
    assert_eq!(
        cp.kubectl(&["scale", "crontab", "my-new-cron-object", "--replicas=3"])
            .trim(),
        "crontab.stable.example.com/my-new-cron-object scaled"
    );
    assert_eq!(
        cp.kubectl(&[
            "get",
            "ct",
            "my-new-cron-object",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );

    // Deleting the definition deletes its objects, then the definition.
    cp.kubectl(&[
        "delete",
        "crd",
        "crontabs.stable.example.com",
        "--wait=true",
        "--timeout=60s",
    ]);
    // (Depending on kubectl's discovery cache it names the missing type or the failed list.)
    let err = cp.kubectl_fails(&["get", "crontabs"], None);
    assert!(
        err.contains("the server doesn't have a resource type \"crontabs\"")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    assert!(cp
        .kubectl_fails(&["get", "crd", "crontabs.stable.example.com"], None)
        .contains("not found"));
}
