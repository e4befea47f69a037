"""Rule labeler for radiology sentences: normal vs abnormal, the deciding rule, finding mentions.

Weak supervision for OFF-CLIP's sentence anomaly classifier, and the structure behind its
templated text prompts ("There is mild cardiomegaly.", "There is no pleural effusion."). One
already-split sentence in, a :class:`RuleLabel` out::

    >>> lab = RuleLabeler()
    >>> r = lab.label("Small left pleural effusion, no pneumothorax.")
    >>> r.label, r.rule
    ('abnormal', 'positive:pleural_effusion')
    >>> [(m.finding, m.status, m.modifiers) for m in r.mentions]
    [('pleural effusion', 'positive', ('small', 'left')), ('pneumothorax', 'negated', ())]

Pipeline (built once in :class:`RuleLabeler`): a blank spaCy English tokenizer (``___`` kept
whole) and one ``PhraseMatcher`` on ``LOWER`` that tags, in a single pass, the finding lexicon
(:data:`LEXICON`: the 13 CheXpert finding observations, support devices, post-surgical change and the
chronic / incidental findings radiologists report), anatomy *anchors* and their *predicates*
("heart" … "enlarged", "lungs" … "clear"), and the NegEx-style triggers. Plain Python then joins
anchors with predicates, resolves overlaps (longest span wins), folds adjectival forms into the
finding they modify ("atherosclerotic vascular calcification"), scopes the triggers, collects
modifiers and decides.

Policy (the first matching row decides):

=====  ================================================  ==========  ===============================
step   condition                                         label       ``rule``
=====  ================================================  ==========  ===============================
1      a **positive** mention (first one in the          abnormal    ``<prefix>:<finding>``, prefix =
       sentence decides)                                             kind of the finding:
                                                                     ``positive`` (acute / CheXpert
                                                                     findings), ``chronic``
                                                                     (granuloma, scoliosis,
                                                                     degenerative change,
                                                                     emphysema, tortuous aorta …,
                                                                     and any finding with an
                                                                     old/healed/remote/chronic/
                                                                     calcified modifier),
                                                                     ``device`` (lines, tubes,
                                                                     pacemaker, ports …),
                                                                     ``postsurgical`` (sternotomy,
                                                                     CABG, surgical clips,
                                                                     lobectomy …)
2      an **uncertain** mention (first one decides)      abnormal    ``uncertain:<finding>``
3      a normal phrase (first one in the sentence)       normal      ``normal_phrase:<id>`` (ids:
                                                                     lungs_clear, lungs_expanded,
                                                                     heart_size_normal,
                                                                     cardiomediastinal_normal,
                                                                     vasculature_normal,
                                                                     osseous_intact, pleura_clear,
                                                                     trachea_midline, normal_chest,
                                                                     no_acute_process,
                                                                     no_focal_consolidation,
                                                                     no_change, unremarkable,
                                                                     other_normal …)
4      only negated mentions                             normal      ``negated_only``
5      no mention at all ("Comparison is made to         normal      ``no_finding``
       prior.", "PA and lateral views of the chest.")
=====  ================================================  ==========  ===============================

So a mixed sentence ("Normal heart size with mild tortuosity of the aorta") is abnormal; "stable",
"unchanged", "again seen" do not remove a finding ("Stable cardiomegaly" is abnormal); "No
significant change" has no mention and is normal. ``<finding>`` in a rule id is the canonical
finding name with spaces as underscores (``positive:pleural_effusion``).

Mention status (CheXpert order, first hit wins):

=====  =====================================================================  ==============
step   cue                                                                    status
=====  =====================================================================  ==============
1      "cannot exclude / cannot be excluded / not ruled out / difficult to    uncertain
       exclude …" scoping the mention
2      pre-negation ("no", "not", "without", "negative for", "free of",      negated
       "clear of", "no evidence of", "absence of", "resolution of",
       "resolved", "removal of", "ruled out", "nor", "neither" …) before it
       in scope; post-negation ("… is not seen", "… has resolved", "… are
       absent", "… removed", "… is normal / within normal limits / is
       unremarkable" with a verb) after it; "normal"/"unremarkable" at most
       two words before it ("normal interstitial markings")
3      pre-uncertainty ("may", "might", "could", "possible", "possibly",      uncertain
       "probable", "probably", "likely", "questionable", "suspicious for",
       "suspected", "concerning for", "worrisome for", "versus", "vs.",
       "differential includes", "suggest…", "borderline",
       "rule out", "?" …); post-uncertainty ("… is suspected", "… is
       possible", "… versus", "… ?", "… is not well seen"); borderline
       predicates ("heart size is upper limits of normal", "top normal",
       "borderline heart size"); a disjunction of findings ("atelectasis or
       scarring", "atelectasis/pneumonia")
4      otherwise                                                              positive
=====  =====================================================================  ==============

*Likely* is an uncertainty cue (a hedge: "likely atelectasis" is uncertain; it is abnormal either
way); "consistent with" / "compatible with" are affirmative. Borderline heart size ("upper limits
of normal", "top normal") is an uncertain cardiomegaly, so abnormal: Open-I's MeSH indexers call
about 3 in 4 reports that say "upper limits of normal" abnormal. Pseudo-negations mask the cues
they contain and negate nothing: "no change in", "no significant/interval change", "not
significantly changed", "no increase in", "without change", "not only", "no worsening". Scope: a pre-cue reaches every mention after it in its clause, so
"no effusion, pneumothorax, or consolidation" negates all three. Clauses end at ``.`` ``;`` ``!``
``?`` and at "but", "however", "although", "though", "whereas", "except", "which", "while",
"aside from", "apart from", "other than". Inside a clause a pre-cue's scope also stops at "with",
"there", and at "," / "and" followed by a new assertion ("there", "the", "stable", "mild",
"possible", "chronic", "left", "right" … : "no acute disease, stable cardiomegaly"; but "no
consolidation, large effusion, or pneumothorax" stays one list). A post-cue reaches back over a
chain of mentions, list words, copulas, modals, determiners and modifiers ("pleural effusion or
pneumothorax is not seen"); "is normal"-type post-cues need a verb in that chain ("heart size and
vascular engorgement appear within normal limits", but not "cardiomegaly and normal
vascularity").

Other decisions: ``___`` and ``XXXX`` (de-identification) are ordinary words; a leading list
marker ("1.", "2)", "(3)", "-", "*") is skipped; modifiers are single words from a fixed lexicon
(severity, extent, side, location, chronicity, character) found inside the finding's span or
next to it (four words before, six after, stopping at punctuation, conjunctions and other
findings); adverbs are normalised (``mildly`` → ``mild``). Granulomas are "Other Finding"
(CheXpert's own mention list has no granuloma); nipple shadows are no finding; removed devices
("interval removal of the chest tube") are negated. :meth:`RuleLabeler.label_many` labels each
distinct sentence once. Bump :data:`RULES_VERSION` whenever a rule or the lexicon changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from typing import Iterable

__all__ = [
    "RULES_VERSION",
    "Mention",
    "RuleLabel",
    "RuleLabeler",
    "SentenceReading",
    "LEXICON",
    "CATEGORIES",
    "KINDS",
]

RULES_VERSION = "rules-1"

CATEGORIES = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices", "Other Finding",
)
KINDS = ("positive", "chronic", "device", "postsurgical")


@dataclass(frozen=True)
class Mention:
    finding: str  #: canonical finding name, lower case ("pleural effusion")
    category: str  #: a CheXpert observation name or "Other Finding"
    status: str  #: "positive" | "negated" | "uncertain"
    modifiers: tuple[str, ...]  #: severity / extent / side / location / chronicity words
    start: int  #: char span of the finding phrase in the sentence
    end: int


@dataclass(frozen=True)
class RuleLabel:
    label: str  #: "normal" | "abnormal"
    rule: str  #: id of the deciding rule (see the module docstring)
    mentions: tuple[Mention, ...]


@dataclass(frozen=True)
class SentenceReading:
    """Everything the labeler found in one sentence (:meth:`RuleLabeler.read`): its label, and
    every normal phrase an anatomy anchor formed with its predicate, in sentence order ("Heart size
    and mediastinal contours are normal" -> ``("heart_size_normal", "cardiomediastinal_normal")``;
    the label's ``rule`` names only the first). Per-observation labels (the demo world's CheXpert
    columns) read the mentions' statuses and these phrases as explicit negatives."""

    label: RuleLabel
    normal_phrases: tuple[str, ...]


# ------------------------------------------------------------------------------------ lexicon
# (canonical name, category, kind, phrases). Phrases: ";"-separated, bash-like "{a,b,}" brace
# alternatives, every "-" also matches as a space and as nothing ("air-space" → "air space",
# "airspace"); a leading "^" marks an adjectival form that folds into a finding right after it.

LEXICON: tuple[tuple[str, str, str, str], ...] = (
    # --- CheXpert observations
    ("pleural effusion", "Pleural Effusion", "positive",
     "effusion{,s}; pleural effusion{,s}; pleural fluid; hydrothorax; hemothorax; empyema;"
     "fissural fluid; fluid in the {minor,major,horizontal,right,left,} fissure;"
     "subpulmonic {effusion,effusions,fluid}; loculated {effusion,fluid}; layering effusion{,s};"
     "pleural fluid collection"),
    ("costophrenic angle blunting", "Pleural Effusion", "positive",
     "blunting; blunted {costophrenic,cp} {angle,angles,sulcus,sulci,recess};"
     "{costophrenic,cp} {angle,angles,sulcus} blunting"),
    ("pneumothorax", "Pneumothorax", "positive",
     "pneumothorax; pneumothoraces; pneumothoraxes; ptx; hydropneumothorax; hemopneumothorax;"
     "hydro-pneumothorax"),
    ("consolidation", "Consolidation", "positive",
     "consolidation{,s}; ^consolidative; consolidated; air-space consolidation{,s};"
     "consolidative {opacity,opacities,change,changes}; air bronchogram{,s}"),
    ("airspace disease", "Lung Opacity", "positive",
     "air-space disease{,s}; air-space process; air-space opacit{y,ies}; air-space opacification;"
     "air-space filling; alveolar {opacity,opacities,disease,process,filling,infiltrate,infiltrates}"),
    ("opacity", "Lung Opacity", "positive",
     "opacit{y,ies}; opacification{,s}; opacified; densit{y,ies}; haziness; ^hazy;"
     "ground-glass; ground-glass opacit{y,ies}; increased density; ^opaque"),
    ("infiltrate", "Lung Opacity", "positive",
     "infiltrate{,s}; infiltration{,s}; ^infiltrative"),
    ("atelectasis", "Atelectasis", "positive",
     "atelectasis; atelectases; ^atelectatic; atelectatic change{,s}; collapse; collapsed;"
     "volume loss; lobar collapse"),
    ("pulmonary edema", "Edema", "positive",
     "edema; pulmonary edema; interstitial edema; alveolar edema; kerley {b,} lines; b-lines;"
     "septal lines; fluid overload; ^edematous"),
    ("vascular congestion", "Edema", "positive",
     "vascular congestion; pulmonary {vascular,venous,} congestion; congestion; cephalization;"
     "cephalized; {pulmonary,} {vascular,venous} engorgement; vascular redistribution;"
     "pulmonary venous hypertension;"
     "venous hypertension; interstitial congestion; vascular prominence"),
    ("heart failure", "Edema", "positive",
     "heart failure; congestive heart failure; chf; congestive failure"),
    ("cardiomegaly", "Cardiomegaly", "positive",
     "cardiomegaly; cardiac enlargement; enlarged heart; heart enlargement;"
     "{left,right,} {ventricular,atrial} enlargement; {ventricular,atrial} {dilatation,dilation}"),
    ("enlarged cardiomediastinum", "Enlarged Cardiomediastinum", "positive",
     "widened mediastinum; mediastinal {widening,enlargement,prominence}; wide mediastinum;"
     "widening of the mediastinum"),
    ("nodule", "Lung Lesion", "positive",
     "nodule{,s}; nodular {opacity,opacities,density,densities,opacification,focus,foci};"
     "nodularity; micronodule{,s}; ^nodular; pulmonary nodule{,s}"),
    ("mass", "Lung Lesion", "positive", "mass; masses; mass lesion{,s}; soft tissue mass{,es}"),
    ("lesion", "Lung Lesion", "positive", "lesion{,s}"),
    ("cavitary lesion", "Lung Lesion", "positive",
     "cavity; cavities; cavitation; cavitary lesion{,s}; cavitary {nodule,nodules,mass};"
     "^cavitary; ^cavitating"),
    ("malignancy", "Lung Lesion", "positive",
     "malignancy; malignancies; tumor{,s}; tumour{,s}; neoplasm{,s}; carcinoma; cancer;"
     "^neoplastic; ^malignant; metastasis; metastases; metastatic disease; ^metastatic; lymphoma"),
    ("fracture", "Fracture", "positive",
     "fracture{,s}; fractured; fx; compression fracture{,s}; compression deformit{y,ies};"
     "wedge deformit{y,ies}; wedging; loss of height; height loss;"
     "post-traumatic {change,changes,deformity,deformities}"),
    ("pleural thickening", "Pleural Other", "chronic",
     "pleural thickening; apical pleural thickening; apical cap{,s}; apical pleural cap{,s};"
     "pleural scarring; pleuro-parenchymal {scarring,scar,scars,thickening,opacity,opacities};"
     "pleural-parenchymal {scarring,scar,scars,thickening}; fibrothorax; pleural {reaction,disease};"
     "fissural thickening; thickening of the {minor,major,right,left,} fissure{,s};"
     "{minor,major} fissure thickening; thickened {minor,major,} fissure{,s}; thickened pleura"),
    ("pleural plaque", "Pleural Other", "chronic",
     "pleural plaque{,s}; calcified pleural plaque{,s}; pleural calcification{,s}; plaque{,s}"),
    ("pneumonia", "Pneumonia", "positive",
     "pneumonia{,s}; bronchopneumonia; pneumonitis; aspiration pneumonia; ^pneumonic"),
    ("infection", "Pneumonia", "positive",
     "infection{,s}; infectious process; ^infectious; inflammatory process; ^inflammatory"),
    ("aspiration", "Pneumonia", "positive", "aspiration"),
    # --- support devices
    ("pacemaker", "Support Devices", "device",
     "pacemaker{,s}; pacer{,s}; {pacemaker,pacer,pacing} {lead,leads,wire,wires,generator,device};"
     "generator; {pacing,pacer,pacemaker} xxxx;"
     "{dual-chamber,dual-lead,single-lead,biventricular,transvenous,cardiac} pacemaker"),
    ("defibrillator", "Support Devices", "device",
     "defibrillator{,s}; icd; aicd; cardioverter-defibrillator; implantable cardioverter;"
     "{icd,aicd,defibrillator} {lead,leads,wire,wires,generator,device}"),
    ("loop recorder", "Support Devices", "device",
     "loop recorder; {cardiac,implantable,implanted} loop recorder; event recorder"),
    ("central venous catheter", "Support Devices", "device",
     "central venous catheter{,s}; central {line,lines,catheter,catheters}; central venous line{,s};"
     "cvc; {ij,internal jugular,jugular,subclavian} {line,lines,catheter,catheters,central line};"
     "hickman {catheter,}; dialysis catheter{,s}; tunneled {catheter,dialysis catheter};"
     "swan-ganz {catheter,}; pulmonary artery catheter; venous catheter{,s}; permacath;"
     "venous line{,s}"),
    ("picc", "Support Devices", "device",
     "picc; picc line{,s}; picc catheter; peripherally inserted central {catheter,line}"),
    ("port", "Support Devices", "device",
     "port{,s}; port-a-cath; portacath; xxxx-a-xxxx; port-a-catheter; mediport; power port; porta cath;"
     "{chest,infusion,venous,subcutaneous,chest wall} port; port catheter; port reservoir"),
    ("endotracheal tube", "Support Devices", "device",
     "endotracheal tube; et tube; ett; endotracheal"),
    ("enteric tube", "Support Devices", "device",
     "{ng,og,nasogastric,orogastric,feeding,enteric,gastric,dobhoff,dobbhoff,peg} tube{,s};"
     "dobhoff; nasogastric; orogastric; g-tube; gastrostomy {tube,}"),
    ("chest tube", "Support Devices", "device",
     "chest tube{,s}; thoracostomy tube{,s}; pleural {catheter,drain,tube}; pigtail {catheter,}"),
    ("tracheostomy", "Support Devices", "device",
     "tracheostomy {tube,cannula,}; trach tube; tracheotomy"),
    ("tube", "Support Devices", "device", "tube{,s}; tubing"),
    ("catheter", "Support Devices", "device", "catheter{,s}; {catheter,xxxx,} tip{,s}"),
    ("stent", "Support Devices", "device",
     "stent{,s}; {coronary,biliary,esophageal,tracheal,bronchial,vascular,endovascular,svc} stent{,s};"
     "stent graft{,s}; stent-graft"),
    ("valve replacement", "Support Devices", "device",
     "valve replacement{,s}; prosthetic {aortic,mitral,tricuspid,heart,cardiac,} valve{,s};"
     "{aortic,mitral,tricuspid} valve {replacement,prosthesis,repair}; valve prosthes{is,es};"
     "avr; mvr; tavr; tavi; mechanical valve{,s}; annuloplasty {ring,}; artificial valve;"
     "bioprosthetic valve"),
    ("orthopedic hardware", "Support Devices", "device",
     "hardware; {orthopedic,orthopaedic,surgical,fixation,spinal,fusion,metallic} hardware;"
     "screw{,s}; {fixation,metallic,surgical,orthopedic,compression} plate{,s}; plate and screws;"
     "{fixation,surgical,spinal,harrington,metallic,fusion} rod{,s}; fixation; internal fixation;"
     "arthroplasty; {shoulder,humeral,joint,hip} {prosthesis,arthroplasty,replacement}; prosthesis;"
     "spinal fusion {hardware,}; {anterior,posterior,} cervical fusion; orif; pedicle screw{,s};"
     "intramedullary {rod,nail}"),
    ("wire", "Support Devices", "device",
     "wire{,s}; cerclage {wire,wires}; {epicardial,surgical} wire{,s}"),
    ("monitoring leads", "Support Devices", "device",
     "{ekg,ecg,electrocardiographic,electrocardiogram,monitoring,telemetry,external,cardiac monitor,"
     "monitor,overlying} {leads,lead,electrodes,electrode,wires,pads}; electrode{,s};"
     "{defibrillator,defib} pads"),
    ("support lines", "Support Devices", "device",
     "lines and tubes; tubes and lines; support {lines,devices,apparatus};"
     "{arterial,dialysis,femoral} line{,s}; midline catheter; all lines"),
    ("drain", "Support Devices", "device",
     "drain{,s}; {surgical,mediastinal,pericardial,jp,jackson-pratt,blake} drain{,s}"),
    ("device", "Support Devices", "device",
     "device{,s}; {cardiac,medical,implanted,electronic,implantable} device{,s};"
     "ventricular assist device; lvad; iabp; intra-aortic balloon pump; balloon pump;"
     "{nerve,spinal,spinal cord,vagal,vagus nerve,neural,neuro,} stimulator{,s}"),
    ("embolization coils", "Support Devices", "device", "{embolization,} coil{,s}"),
    ("ivc filter", "Support Devices", "device", "ivc filter; vena cava filter; ivc xxxx"),
    ("septal occluder", "Support Devices", "device",
     "{atrial septal,septal,asd,pfo} occluder{,s}; occluder device; occluder{,s}"),
    ("shunt", "Support Devices", "device",
     "{vp,ventriculoperitoneal} shunt{,s}; shunt {tubing,catheter}; shunt"),
    ("breast implant", "Support Devices", "device",
     "breast {implant,implants,prosthesis,prostheses,expander,expanders}; tissue expander{,s};"
     "implant{,s}"),
    ("gastric band", "Support Devices", "device",
     "gastric band; lap-band; gastric banding; adjustable gastric band"),
    # --- post-surgical change
    ("sternotomy", "Support Devices", "postsurgical",
     "sternotomy; median sternotomy; sternotomy {wire,wires,suture,sutures,changes,clips};"
     "sternal {wire,wires,sutures,suture}; median sternotomy {wire,wires,sutures};"
     "sternal cerclage wire{,s}; midline sternotomy {wire,wires,}"),
    ("cabg", "Support Devices", "postsurgical",
     "cabg; coronary artery bypass {graft,grafts,grafting,surgery};"
     "coronary bypass {graft,grafts,grafting,surgery}; bypass {graft,grafts,grafting};"
     "cabg {clips,changes}"),
    ("surgical clips", "Support Devices", "postsurgical",
     "surgical clip{,s}; clip{,s}; cholecystectomy clip{,s}; vascular clip{,s};"
     "{axillary,mediastinal,neck,abdominal} clip{,s}"),
    ("surgical sutures", "Support Devices", "postsurgical",
     "{surgical,} staple{,s}; suture{,s}; suture material; surgical sutures; suture line{,s}"),
    ("cholecystectomy", "Other Finding", "postsurgical", "cholecystectomy"),
    ("mastectomy", "Other Finding", "postsurgical", "mastectomy; mastectomies; lumpectomy"),
    ("lobectomy", "Other Finding", "postsurgical",
     "lobectomy; pneumonectomy; segmentectomy; wedge resection{,s}; lung resection; resection"),
    ("thoracotomy", "Other Finding", "postsurgical", "thoracotomy"),
    ("vertebroplasty", "Other Finding", "postsurgical",
     "vertebroplasty; vertebroplasties; kyphoplasty; kyphoplasties; vertebral augmentation"),
    ("spinal fusion", "Other Finding", "postsurgical", "spinal fusion; fusion; laminectomy; discectomy"),
    ("postsurgical change", "Other Finding", "postsurgical",
     "post-surgical change{,s}; post-operative change{,s}; surgical change{,s}; ^post-surgical;"
     "^post-operative; post-surgical appearance; post-treatment change{,s};"
     "post-radiation change{,s}; radiation change{,s}; radiation fibrosis; ^status post; ^s/p;"
     "fundoplication; esophagectomy; thyroidectomy; gastric bypass; gastric pull-through"),
    # --- chronic and other findings
    ("granuloma", "Other Finding", "chronic",
     "granuloma{,s}; granulomata; calcified granuloma{,s}; granulomatous disease; ^granulomatous;"
     "granulomatous {change,changes,process,infection}; histoplasmosis; histoplasmoma{,s}"),
    ("calcified lymph node", "Other Finding", "chronic",
     "calcified {right,left,bilateral,} {hilar,mediastinal,paratracheal,subcarinal,axillary,}"
     " {lymph,} {node,nodes,xxxx};"
     "nodal calcification{,s}; lymph node calcification{,s}; calcified adenopathy"),
    ("scoliosis", "Other Finding", "chronic",
     "scoliosis; ^scoliotic; dextroscoliosis; levoscoliosis; dextrocurvature; levocurvature;"
     "curvature of the {thoracic,thoracolumbar,} spine; {spinal,spine} curvature; kyphoscoliosis;"
     "curvature; dextro curvature; levo curvature;"
     "scoliotic curvature; {dextroconvex,levoconvex} curvature"),
    ("kyphosis", "Other Finding", "chronic",
     "kyphosis; ^kyphotic; kyphotic curvature; hyperkyphosis"),
    ("emphysema", "Other Finding", "chronic",
     "emphysema; ^emphysematous; emphysematous change{,s}; {bullous,centrilobular,paraseptal} emphysema"),
    ("hyperinflation", "Other Finding", "chronic",
     "hyperinflation; hyper-inflated; hyperexpansion; hyper-expanded; over-inflation; over-inflated;"
     "over-expanded; over-expansion; hyper-aeration; hyper-aerated; hyperlucency; hyperlucent;"
     "hyperdistention; hyperdistension; hyperdistended;"
     "flattened {hemidiaphragms,diaphragms,hemidiaphragm,diaphragm};"
     "flattening of the {hemidiaphragms,diaphragms,diaphragm,hemidiaphragm};"
     "increased {ap,anteroposterior,a-p} diameter; air trapping"),
    ("copd", "Other Finding", "chronic",
     "copd; chronic obstructive pulmonary disease; chronic obstructive lung disease;"
     "obstructive lung disease; obstructive pulmonary disease; obstructive airway{,s} disease;"
     "chronic airway{,s} disease; reactive airway{,s} disease"),
    ("chronic lung disease", "Other Finding", "chronic",
     "chronic lung disease; chronic lung changes; chronic {pulmonary,interstitial,parenchymal} changes;"
     "chronic {pulmonary,parenchymal} disease; chronic changes"),
    ("calcification", "Other Finding", "chronic",
     "calcification{,s}; ^calcific; calcific {density,densities,focus,foci};"
     "calcified {density,densities,focus,foci}; ^calcified"),
    ("aortic calcification", "Other Finding", "chronic",
     "aortic calcification{,s}; calcified aorta; calcified aortic {arch,knob,knuckle};"
     "aortic {arch,knob} calcification{,s}; aortic atherosclerotic calcification{,s}"),
    ("vascular calcification", "Other Finding", "chronic",
     "vascular calcification{,s}; atherosclerotic calcification{,s};"
     "{coronary,coronary artery,arterial,mitral annular,mitral annulus} calcification{,s};"
     "calcified {vessels,arteries,vasculature}"),
    ("tortuous aorta", "Other Finding", "chronic",
     "tortuous; tortuosity; tortuous aorta; ectatic; ectasia; unfolded aorta;"
     "unfolding of the {thoracic,} aorta; aortic {tortuosity,ectasia,unfolding};"
     "uncoiled aorta; uncoiling of the aorta"),
    ("aortic enlargement", "Other Finding", "positive",
     "aortic aneurysm; aneurysm{,s}; aneurysmal dilatation; dilated aorta;"
     "aortic {dilatation,dilation,enlargement}; ^aneurysmal"),
    ("atherosclerosis", "Other Finding", "chronic",
     "atherosclerosis; ^atherosclerotic;"
     "atherosclerotic {change,changes,disease,plaque,plaques,vascular disease};"
     "atheromatous {change,changes,disease,plaque}; arteriosclerosis; ^arteriosclerotic"),
    ("degenerative change", "Other Finding", "chronic",
     "degenerative change{,s}; degenerative disease; degenerative {disc,disk,joint} disease;"
     "^degenerative; djd; arthritis; osteoarthritis; arthritic change{,s}; ^arthritic; arthropathy;"
     "facet arthropathy; senescent change{,s}; disc space narrowing; disk space narrowing; degeneration;"
     "hypertrophic change{,s}; diffuse idiopathic skeletal hyperostosis; hyperostosis; dish;"
     "endplate {change,changes,sclerosis,irregularity,irregularities,spurring,degeneration}"),
    ("spondylosis", "Other Finding", "chronic",
     "spondylosis; ^spondylitic; ^spondylotic; spondylotic change{,s}; spondyloarthropathy"),
    ("osteophytes", "Other Finding", "chronic",
     "osteophyte{,s}; osteophytosis; ^osteophytic; spur{,s}; spurring; syndesmophyte{,s}"),
    ("fibrosis", "Other Finding", "chronic",
     "fibrosis; ^fibrotic; fibrotic change{,s}; pulmonary fibrosis"),
    ("scarring", "Lung Opacity", "chronic",
     "scar{,s}; scarring; scarred; parenchymal scarring; linear scarring; ^cicatricial"),
    ("interstitial markings", "Lung Opacity", "positive",
     "interstitial marking{,s};"
     "interstitial {prominence,pattern,opacity,opacities,change,changes,thickening,infiltrate,"
     "infiltrates,process,density,densities,accentuation,abnormality,abnormalities};"
     "^reticular; reticulation; reticular {opacity,opacities,markings,pattern,densities,changes};"
     "^reticulonodular; reticulonodular {opacity,opacities,markings,pattern,densities};"
     "increased {lung,interstitial,bronchovascular,pulmonary,} markings;"
     "{coarse,coarsened} {interstitial,lung,bronchovascular,} markings; honeycombing;"
     "{increased,prominent,coarse,coarsened,} interstitial {lung,pulmonary} markings"),
    ("interstitial lung disease", "Lung Opacity", "chronic",
     "interstitial {lung,} disease; ild; interstitial pneumonitis; interstitial fibrosis"),
    ("bronchiectasis", "Other Finding", "chronic",
     "bronchiectasis; ^bronchiectatic; bronchiectatic change{,s}"),
    ("peribronchial thickening", "Lung Opacity", "positive",
     "peribronchial {thickening,cuffing,opacities,opacity,markings,infiltrates};"
     "bronchial wall thickening; bronchitic {change,changes,markings}; airway{,s} thickening;"
     "bronchial thickening; airway{,s} disease"),
    ("bronchitis", "Other Finding", "positive", "bronchitis; bronchiolitis"),
    ("hiatal hernia", "Other Finding", "chronic", "hiatal hernia{,s}; hiatus hernia{,s}"),
    ("hernia", "Other Finding", "chronic",
     "hernia{,s}; herniation; {bochdalek,morgagni,diaphragmatic} hernia"),
    ("elevated hemidiaphragm", "Other Finding", "positive",
     "eventration; elevated {hemidiaphragm,diaphragm,hemidiaphragms};"
     "elevation of the {right,left,} {hemidiaphragm,diaphragm}"),
    ("low lung volumes", "Other Finding", "positive",
     "low lung volume{,s}; low volume{,s}; low inspiratory volume{,s}; hypo-inflation; hypo-inflated;"
     "hypo-expansion; hypo-expanded; hypo-aeration; hypo-aerated; under-inflation; under-inflated;"
     "poor inspiration; poor inspiratory effort; shallow inspiration; suboptimal inspiration;"
     "{decreased,diminished,reduced,lower} lung volume{,s}; bronchovascular crowding;"
     "vascular crowding; crowding of {the,} {bronchovascular,vascular} markings; hypoventilation;"
     "hypoventilatory change{,s}; hypoventilated; low inspiration;"
     "crowded {bronchovascular,vascular} markings"),
    ("lymphadenopathy", "Other Finding", "positive",
     "lymphadenopathy; adenopathy; {enlarged,prominent} {lymph,} node{,s}; lymph node enlargement;"
     "{hilar,mediastinal,paratracheal,axillary,subcarinal} {adenopathy,lymphadenopathy}; bulky hila"),
    ("hilar prominence", "Other Finding", "positive",
     "{hilar,bihilar} {prominence,enlargement,fullness}; prominent hil{a,um};"
     "{enlarged,full,bulky} hil{a,um};"
     "prominence of the hil{a,um}"),
    ("pericardial effusion", "Other Finding", "positive", "pericardial effusion{,s}; pericardial fluid"),
    ("pulmonary hypertension", "Other Finding", "positive",
     "pulmonary {arterial,artery,} hypertension;"
     "{enlarged,prominent,dilated} {central,main,} pulmonary arter{y,ies};"
     "pulmonary {artery,arterial} {enlargement,prominence,dilatation,dilation}"),
    ("pneumoperitoneum", "Other Finding", "positive",
     "pneumoperitoneum; {free,} {intraperitoneal,subdiaphragmatic,abdominal,peritoneal} {free,} air;"
     "free air; air under the {diaphragm,diaphragms,hemidiaphragm,hemidiaphragms}"),
    ("pneumomediastinum", "Other Finding", "positive",
     "pneumomediastinum; mediastinal emphysema; pneumopericardium"),
    ("subcutaneous emphysema", "Other Finding", "positive",
     "subcutaneous {emphysema,air,gas}; soft tissue {emphysema,air,gas}"),
    ("metabolic bone disease", "Other Finding", "chronic",
     "{renal,} osteodystrophy; hyperparathyroidism; brown tumor{,s}; metabolic bone disease"),
    ("soft tissue swelling", "Other Finding", "positive",
     "soft tissue {edema,swelling}; subcutaneous edema; anasarca"),
    ("epicardial fat", "Other Finding", "positive", "epicardial fat {pad,pads,}; pericardial fat pad{,s}"),
    ("osteopenia", "Other Finding", "chronic",
     "osteopenia; ^osteopenic; osteoporosis; ^osteoporotic; demineralization; ^demineralized;"
     "osseous demineralization; bone loss"),
    ("bone lesion", "Other Finding", "positive",
     "{lytic,sclerotic,blastic,osteolytic,osteoblastic,bony,osseous,bone,expansile}"
     " {lesion,lesions,focus,foci,density,densities}; bone island{,s}; enostos{is,es}"),
    ("deformity", "Other Finding", "chronic",
     "deformit{y,ies}; pectus {excavatum,carinatum,deformity}; ^deformed"),
    ("cyst", "Other Finding", "positive",
     "cyst{,s}; ^cystic; cystic {change,changes,lesion,lesions,lucency,lucencies,space,spaces};"
     "pneumatocele{,s}"),
    ("bulla", "Other Finding", "chronic",
     "bulla; bullae; bullous {disease,change,changes}; ^bullous; bleb{,s}"),
    ("lucency", "Other Finding", "positive", "lucenc{y,ies}"),
    ("thickening", "Other Finding", "positive", "thickening"),
    ("tuberculosis", "Other Finding", "positive",
     "tuberculosis; tb; ^tuberculous; mycobacterial infection; ^mycobacterial"),
    ("sarcoidosis", "Other Finding", "chronic", "sarcoidosis; sarcoid"),
    ("foreign body", "Other Finding", "positive",
     "foreign bod{y,ies}; {nipple,body} {ring,rings,piercing,piercings,jewelry}; piercing{,s};"
     "jewelry; bullet{,s};"
     "bullet fragment{,s}; shrapnel; buckshot;"
     "metallic {fragment,fragments,foreign body,density,densities,object,objects}"),
    ("air-fluid level", "Other Finding", "positive", "air-fluid level{,s}"),
    ("dislocation", "Other Finding", "positive",
     "dislocation{,s}; dislocated; subluxation{,s}; subluxed; malalignment"),
    ("mediastinal shift", "Other Finding", "positive",
     "{cardio-mediastinal,mediastinal} shift; tracheal deviation"),
    ("situs anomaly", "Other Finding", "positive",
     "dextrocardia; situs inversus; right-sided aortic arch; right aortic arch"),
    ("organomegaly", "Other Finding", "positive",
     "splenomegaly; hepatomegaly; cholelithiasis; gallstone{,s}"),
    ("abnormality", "Other Finding", "positive",
     "abnormalit{y,ies}; ^abnormal; disease{,s}"),
)

# ----------------------------------------------------------------------- anchors + predicates
#: Anatomy anchors: they name no finding, their predicate does ("heart" + "enlarged").
ANCHORS: dict[str, str] = {
    "heart": "heart; heart size; heart silhouette; heart shadow; cardiac silhouette{,s};"
             "cardiac size; cardiac shadow; cardiac contour{,s}; cardiac; cardiac diameter;"
             "heart contour{,s}",
    "mediastinum": "mediastinum; mediastinal {contour,contours,silhouette,silhouettes,width,shadow,"
                   "structures,configuration}; mediastinal; cardio-mediastinal {silhouette,"
                   "silhouettes,contour,contours,shadow,structures,width}; cardio-mediastinal;"
                   "superior mediastinum",
    "hila": "hila; hilum; hili; hilar; bihilar; hilar {contour,contours,structures,regions,shadows}",
    "vasculature": "{pulmonary,} vasculature; {pulmonary,} vascularity; {pulmonary,} vascular"
                   " {markings,pattern}; pulmonary vessels; pulmonary xxxx; vessels;"
                   "pulmonary {arterial,venous} {vasculature,markings}",
    "lungs": "lung{,s}; lung fields; lung parenchyma; parenchyma; lung bases; lung zones",
    "volumes": "{lung,inspiratory,} volume{,s}; lung inflation; inspiration; inspiratory effort",
    "diaphragm": "diaphragm{,s}; hemi-diaphragm{,s}; diaphragmatic {contour,contours,}",
    "aorta": "aorta; {thoracic,descending,ascending,abdominal} aorta;"
             "aortic {arch,knob,knuckle,contour,root}; aortic",
    "pulmonary arteries": "pulmonary arter{y,ies}; {central,main} pulmonary arter{y,ies};"
                          "pulmonary {trunk,outflow tract}",
    "costophrenic": "costophrenic {angle,angles,sulcus,sulci,recess,recesses}; costophrenic;"
                    "{cp,c-p} {angle,angles}",
    "interstitium": "lung markings; bronchovascular markings; {pulmonary,lung,} interstitium;"
                    "interstitial markings",
    "osseous": "{osseous,bony,skeletal,bone} structures; osseous; bones; bony thorax; skeleton;"
               "{thoracic,} spine; ribs; {osseous,bony,skeletal} thorax",
    "pleura": "pleural spaces; pleura; pleural space; pleural surfaces",
    "trachea": "trachea",
    "chest": "chest; study; exam; examination; radiograph{,s}; film{,s}; x-ray; chest x-ray",
    "soft tissues": "soft tissue{,s}",
}
PREDICATES: dict[str, str] = {
    "enlarged": "enlarged; enlargement; large; larger; increased; prominent; prominence; globular;"
                "enlarging; increase in size; increased in size; dilated; dilatation; dilation;"
                "widened; widening; wide; fullness; full; bulky",
    "borderline": "borderline; borderline enlarged; borderline in size; upper limit{,s} {of,} normal;"
                  "upper {limit,limits} of normal in size; upper normal; top normal; top-normal;"
                  "high normal; high-normal; upper-normal; top normal in size; upper limits",
    "low": "low; decreased; diminished; reduced; small; smaller; lower; poor; shallow; suboptimal",
    "elevated": "elevated; elevation; raised; high; higher; high-riding",
    "flattened": "flattened; flattening; flat",
    "tortuous": "tortuous; tortuosity; ectatic; ectasia; unfolded; unfolding; uncoiled; uncoiling;"
                "elongated",
    "calcified": "calcified; calcification{,s}; calcific; atherosclerotic; atherosclerosis",
    "blunted": "blunted; blunting; blunt",
    "congested": "congested; congestion; engorged; engorgement; indistinct; indistinctness;"
                 "cephalized; cephalization; redistribution; distended",
    "coarse": "coarse; coarsened; coarsening; accentuated; accentuation",
    "normal": "normal; low normal; low-normal; within normal limits; within limits of normal;"
              "within the limits of normal;"
              "normal limits; within the normal range; wnl; unremarkable; normal in size;"
              "normal size; grossly normal; normal in caliber",
    "clear": "clear; sharp; clear bilaterally",
    "intact": "intact",
    "midline": "midline",
    "expanded": "expanded; well-expanded; well-aerated; aerated; inflated; well-inflated;"
                "normally inflated; normally expanded; normally aerated; fully expanded;"
                "adequately inflated; adequately expanded",
}
#: (anchor, predicate) → finding name (abnormal combinations; "!" marks uncertain by itself).
_FINDING_COMBOS: dict[tuple[str, str], str] = {
    ("heart", "enlarged"): "cardiomegaly",
    ("heart", "borderline"): "!cardiomegaly",
    ("mediastinum", "enlarged"): "enlarged cardiomediastinum",
    ("mediastinum", "borderline"): "!enlarged cardiomediastinum",
    ("hila", "enlarged"): "hilar prominence",
    ("vasculature", "enlarged"): "vascular congestion",
    ("vasculature", "congested"): "vascular congestion",
    ("vasculature", "coarse"): "vascular congestion",
    ("volumes", "low"): "low lung volumes",
    ("lungs", "low"): "low lung volumes",
    ("diaphragm", "elevated"): "elevated hemidiaphragm",
    ("diaphragm", "flattened"): "hyperinflation",
    ("aorta", "tortuous"): "tortuous aorta",
    ("aorta", "calcified"): "aortic calcification",
    ("aorta", "enlarged"): "aortic enlargement",
    ("pulmonary arteries", "enlarged"): "pulmonary hypertension",
    ("costophrenic", "blunted"): "costophrenic angle blunting",
    ("interstitium", "enlarged"): "interstitial markings",
    ("interstitium", "coarse"): "interstitial markings",
}
#: (anchor, predicate) → normal-phrase id.
_NORMAL_COMBOS: dict[tuple[str, str], str] = {
    ("lungs", "clear"): "lungs_clear",
    ("lungs", "normal"): "lungs_clear",
    ("lungs", "expanded"): "lungs_expanded",
    ("volumes", "normal"): "lungs_expanded",
    ("heart", "normal"): "heart_size_normal",
    ("mediastinum", "normal"): "cardiomediastinal_normal",
    ("hila", "normal"): "cardiomediastinal_normal",
    ("vasculature", "normal"): "vasculature_normal",
    ("osseous", "normal"): "osseous_intact",
    ("osseous", "intact"): "osseous_intact",
    ("pleura", "clear"): "pleura_clear",
    ("pleura", "normal"): "pleura_clear",
    ("costophrenic", "clear"): "pleura_clear",
    ("costophrenic", "normal"): "pleura_clear",
    ("trachea", "midline"): "trachea_midline",
    ("trachea", "normal"): "trachea_midline",
    ("chest", "normal"): "normal_chest",
    ("diaphragm", "normal"): "diaphragm_normal",
    ("soft tissues", "normal"): "soft_tissues_normal",
    ("aorta", "normal"): "aorta_normal",
    ("interstitium", "normal"): "lungs_clear",
}
_NORMAL_PREDS = frozenset({"normal", "clear", "intact", "midline", "expanded"})

# ------------------------------------------------------------------------------------ triggers
TRIGGERS: dict[str, str] = {
    # pre-negation (negates mentions after it, in scope)
    "preneg": "no; not; without; negative; negative for; free of; clear of; no evidence of; absence of;"
              "absent; resolution of; resolved; removal of; ruled out; nor; neither; lack of;"
              "no longer; no signs of; no sign of; never; no new; interval removal of",
    # post-negation (negates the chain of mentions before it)
    "postneg": "not seen; not identified; not present; not visualized; not demonstrated;"
               "not evident; not appreciated; not noted; not detected; not visible; not apparent;"
               "no longer {seen,visible,present,evident,identified,visualized,demonstrated};"
               "resolved; has resolved; have resolved; absent; cleared; has cleared;"
               "have cleared; removed; been removed; ruled out; excluded; negative",
    # pseudo-negation: masks the cues it covers, negates nothing
    "pseudo": "{no,not,without} {significant,interval,significant interval,definite,appreciable,"
              "substantial,acute,xxxx,significantly,} {change,changes,changed,increase,increased,"
              "progression,worsening,difference,different,decrease,enlargement};"
              "not only; not significantly changed; not changed; no new or changed;"
              "not well {seen,visualized,evaluated,assessed,demonstrated}; not fully excluded",
    # uncertainty that wins over negation ("cannot exclude")
    "unc_first": "can not {exclude,be excluded,rule out,be ruled out,be entirely excluded,"
                 "be completely excluded,be entirely ruled out,be fully excluded};"
                 "ca n't {exclude,rule out,be excluded}; not {be,} excluded; not {be,} ruled out;"
                 "not {entirely,completely,totally,definitely} excluded; difficult to exclude;"
                 "could not be excluded; not be entirely excluded; no evidence to rule out;"
                 "difficult to {completely,entirely,} {exclude,rule out};"
                 "can not {completely,entirely} {exclude,rule out};"
                 "not {entirely,completely,totally,definitely} ruled out",
    # pre-uncertainty
    "preunc": "may; might; could; possible; possibly; probable; probably; likely; most likely;"
              "questionable; question of; questioned; suspicious; suspicion; suspicion of;"
              "suspected; suspect; concerning; concern for; worrisome; equivocal; indeterminate;"
              "borderline; versus; vs; vs.; differential; differential includes;"
              "differential diagnosis; suggest; suggests; suggested; suggesting; suggestive;"
              "suggestive of; presumed; presumably; favor; favored; favoring; rule out; r / o;"
              "to exclude; consider; considered; uncertain; unclear; vague;"
              "could represent; may represent; might represent; cannot be determined; ?;"
              "perhaps; potential; potentially; apparent; apparently",
    # post-uncertainty
    "postunc": "is suspected; are suspected; suspected; is questioned; questioned; is possible;"
               "are possible; possible; versus; vs; vs.; ?; is not well seen; not well seen;"
               "not well visualized; could be present; may be present; is not excluded;"
               "is likely; are likely; is probable; is favored; or less likely; less likely",
    # clause terminators
    "term": "but; however; although; though; whereas; except; which; while; aside from;"
            "apart from; other than; yet",
}
#: After "," or "and", a word that opens a new assertion and ends a pre-cue's scope.
_BREAK_AFTER = frozenset("""
there the a an this these it which stable unchanged again persistent persisting mild mildly
moderate moderately severe severely marked markedly chronic old healed status postsurgical
postoperative possible possibly probable probably likely questionable new minimal minimally
slight slightly heart lungs lung mediastinum cardiac cardiomediastinal degenerative calcified
atherosclerotic tortuous though otherwise he she patient interval redemonstrated left right
""".split())
_COPULAS = frozenset(
    "is are was were be been being appear appears appeared remain remains remained seem seems "
    "looks look".split()
)
#: Severity / extent / side / location / chronicity / character words kept as modifiers
#: (normalised spelling on the right).
_MODIFIER_WORDS: dict[str, str] = {w: w for w in """
mild minimal slight small tiny trace moderate large severe marked extensive massive subtle
borderline minor focal diffuse patchy multifocal scattered multiple few several numerous bilateral
unilateral bibasilar bibasal streaky linear subsegmental segmental lobar platelike discoid nodular
reticular confluent loculated layering left right basilar basal base bases apical apex apices
upper middle mid lower lingula lingular perihilar hilar retrocardiac peripheral central
costophrenic paratracheal mediastinal subpleural anterior posterior lateral medial thoracic lumbar
cervical thoracolumbar chronic old healed remote prior stable unchanged new acute subacute
persistent residual recurrent increased increasing decreased decreasing improved improving
worsened worsening progressive resolving calcified noncalcified granulomatous atherosclerotic
degenerative postinflammatory emphysematous interstitial dense punctate early developing
""".split()}
_MODIFIER_WORDS.update({
    "mildly": "mild", "minimally": "minimal", "chronically": "chronic", "slightly": "slight",
    "moderately": "moderate",
    "severely": "severe", "markedly": "marked", "extensively": "extensive",
    "bilaterally": "bilateral", "diffusely": "diffuse", "focally": "focal",
    "bibasilar": "bibasilar", "biapical": "apical", "again": "again", "redemonstrated": "again",
    "non-calcified": "noncalcified",
})
#: Modifiers that make a "positive"-kind finding chronic (rule prefix ``chronic``).
_CHRONIC_MODS = frozenset({"old", "healed", "remote", "chronic", "calcified", "granulomatous",
                           "postinflammatory"})
#: Words a post-cue may reach back over (besides mentions and modifier words).
_CHAIN_OK = frozenset("""
is are was were be been being has have had appear appears appeared remain remains remained seen
identified noted present demonstrated visualized evident appreciated detected now currently also
either both the a an any or and nor , of in on at within size to xxxx ___ - definitely clearly
lobe lobes side hemithorax zone zones region regions field fields space spaces angle angles
spine aspect level segment vessels longer may might could would will can
""".split())
#: Words between an anchor and a following predicate ("heart is not significantly enlarged").
_GAP_FWD = frozenset("""
is are was were be been appears appear appeared remains remain remained seems seem looks size
sized in at of the to on mildly moderately severely markedly slightly minimally significantly not
no longer now again still somewhat top upper also both bilaterally left right silhouette contour
contours shadow xxxx ___ - well grossly otherwise and stably overall normally configuration near
approaching
""".split())
#: Words between a predicate and a following anchor ("enlargement of the cardiac silhouette").
_GAP_BACK = frozenset("""
the a an of in mildly moderately severely markedly slightly minimally left right bilateral both
xxxx ___ - and thoracic descending ascending lung pulmonary
""".split())
#: Words a modifier may sit behind, before the finding ("old right rib fractures").
_BEFORE_OK = frozenset("""
a an the of - xxxx ___ very lobe is are there seen again in rib ribs lung lungs pulmonary pleural
spine spinal vertebral body clavicle clavicular humeral chest wall soft tissue hemithorax side
sided zone field aortic vascular thoracic lymph node t l c
""".split())
#: Words between an adjectival form and the finding it modifies.
_ADJ_GAP = frozenset(_MODIFIER_WORDS) | {"-", "xxxx", "___", "a", "an", "the", "prior", "recent",
                                         "median", "and", "pulmonary", "lung", "vascular"}
_DISJUNCTIONS = frozenset({"or", "versus", "vs", "vs.", "/", "and/or"})
_LIST_MARKER_RE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022])\s+")
_NORMAL_REGEXES: tuple[tuple[str, re.Pattern], ...] = (
    ("no_acute_process", re.compile(
        r"\b(?:no|negative for|without|free of)\b(?:\W+\w+){0,4}?\W+(?:acute|active)\b")),
    ("no_focal_consolidation", re.compile(
        r"\b(?:no|negative for|without|free of)\b(?:\W+\w+){0,3}?\W+focal\b")),
    ("unremarkable", re.compile(r"\bunremarkable\b")),
    ("normal_chest", re.compile(
        r"^\W*(?:negative|normal)\W*$"
        r"|\b(?:normal|negative|unremarkable)\s+(?:\w+\s+)?(?:chest|study|exam|examination|radiograph)")),
)


def _expand(phrase: str) -> list[str]:
    """Bash-like brace expansion ("{a,b,}x" → ["ax", "bx", "x"]), then hyphen variants."""
    m = re.search(r"\{([^{}]*)\}", phrase)
    if m:
        out: list[str] = []
        for alt in m.group(1).split(","):
            out.extend(_expand(phrase[: m.start()] + alt + phrase[m.end():]))
        return out
    phrase = " ".join(phrase.split())
    if not phrase:
        return []
    variants = {phrase}
    if "-" in phrase and phrase not in ("-",):
        variants.add(phrase.replace("-", " "))
        variants.add(phrase.replace("-", ""))
    return sorted(v for v in variants if v.strip())


def _phrases(spec: str) -> list[tuple[str, bool]]:
    """(phrase, adjectival?) pairs of a ";"-separated spec."""
    out = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        adj = part.startswith("^")
        for p in _expand(part.lstrip("^")):
            out.append((p, adj))
    return out


_ENTRIES: dict[str, tuple[str, str]] = {name: (cat, kind) for name, cat, kind, _ in LEXICON}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class _M:
    """A mention under construction (token span)."""

    __slots__ = ("s", "e", "name", "adj", "unc", "mods", "inner")

    def __init__(self, s: int, e: int, name: str, adj: bool = False, unc: bool = False):
        self.s, self.e, self.name, self.adj, self.unc = s, e, name, adj, unc
        self.mods: list[tuple[int, str]] = []
        self.inner = (s, e)  # token range whose modifier words belong to the mention


def _longest(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping spans, longest first (then earliest), returned in text order."""
    taken: list[tuple[int, int, str]] = []
    used: set[int] = set()
    for s, e, key in sorted(spans, key=lambda x: (x[0] - x[1], x[0], x[2])):
        if any(i in used for i in range(s, e)):
            continue
        taken.append((s, e, key))
        used.update(range(s, e))
    taken.sort()
    return taken


class RuleLabeler:
    """Rule labeler (see the module docstring). Build once; :meth:`label_many` for corpora."""

    version = RULES_VERSION

    def __init__(self):
        import spacy
        from spacy.matcher import PhraseMatcher
        from spacy.util import compile_prefix_regex, compile_suffix_regex

        nlp = spacy.blank("en")
        # "___" (de-identification) stays one token.
        nlp.tokenizer.prefix_search = compile_prefix_regex([r"_{2,}", *nlp.Defaults.prefixes]).search
        nlp.tokenizer.suffix_search = compile_suffix_regex([r"_{2,}", *nlp.Defaults.suffixes]).search
        self.nlp = nlp
        self.version = RULES_VERSION
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        self._keys: dict[int, tuple[str, str, bool]] = {}  # match id → (group, value, adjectival)

        def add(group: str, value: str, spec: str) -> None:
            by_adj: dict[bool, list[str]] = {False: [], True: []}
            for p, adj in _phrases(spec):
                by_adj[adj].append(p)
            for adj, phrases in by_adj.items():
                if not phrases:
                    continue
                key = f"{group}|{value}|{int(adj)}"
                matcher.add(key, [nlp.make_doc(p) for p in sorted(set(phrases))])
                self._keys[nlp.vocab.strings[key]] = (group, value, adj)

        for name, _cat, _kind, spec in LEXICON:
            add("F", name, spec)
        for name, spec in ANCHORS.items():
            add("A", name, spec)
        for name, spec in PREDICATES.items():
            add("P", name, spec)
        for name, spec in TRIGGERS.items():
            add("T", name, spec)
        self._matcher = matcher

    # ------------------------------------------------------------------------------ public
    def label(self, sentence: str) -> RuleLabel:
        return self._label_doc(self.nlp.make_doc(sentence or ""))

    def label_many(self, sentences: Iterable[str], batch_size: int = 512) -> list[RuleLabel]:
        """:meth:`label` for many sentences (``nlp.pipe`` batches; identical sentences are
        labelled once)."""
        texts = [s or "" for s in sentences]
        unique = list(dict.fromkeys(texts))
        done: dict[str, RuleLabel] = {}
        it = iter(unique)
        while True:
            chunk = list(islice(it, batch_size))
            if not chunk:
                break
            for text, doc in zip(chunk, self.nlp.tokenizer.pipe(chunk, batch_size=batch_size)):
                done[text] = self._label_doc(doc)
        return [done[t] for t in texts]

    def read(self, sentence: str) -> SentenceReading:
        """:meth:`label` and the sentence's anchor normal phrases (:class:`SentenceReading`)."""
        return self._read_doc(self.nlp.make_doc(sentence or ""))

    # --------------------------------------------------------------------------- internals
    def sentence_state(self, sentence: str) -> "_Sentence":
        """The labelling state of one sentence, matched and ready for its phases (for tests and
        debugging; :meth:`label` runs them all)."""
        doc = self.nlp.make_doc(sentence or "")
        return _Sentence(doc, self._matcher(doc), self._keys)

    def _label_doc(self, doc) -> RuleLabel:
        return self._read_doc(doc).label

    def _read_doc(self, doc) -> SentenceReading:
        if len(doc) == 0:
            return SentenceReading(RuleLabel("normal", "no_finding", ()), ())
        state = _Sentence(doc, self._matcher(doc), self._keys)
        label = state.label()
        return SentenceReading(label, tuple(nid for _, nid in sorted(state.normal_hits)))


class _Sentence:
    """One tokenized sentence (a spaCy ``Doc``) and what each labelling phase finds in it.

    The phases, in :meth:`label`'s order, each reading what the earlier ones left here (a test can
    run them up to the one it looks at, :meth:`RuleLabeler.sentence_state`, or set those attributes
    by hand):

    1. :meth:`scan_triggers`: negation / uncertainty cue spans, those inside pseudo-triggers dropped;
    2. :meth:`split_clauses`: a clause number per token, and the tokens that break a cue's scope;
    3. :meth:`pair_anchors`: anchor + predicate pairs ("heart … enlarged") become findings or
       normal phrases;
    4. :meth:`collect_mentions`: finding spans, longest wins, adjectival forms folded in;
    5. :meth:`assign_statuses`: positive / negated / uncertain per mention;
    6. :meth:`attach_modifiers`: the :class:`Mention` objects, with their modifier words;
    7. :meth:`decide`: the :class:`RuleLabel` (the policy table in the module docstring).
    """

    def __init__(self, doc, matches, keys: dict[int, tuple[str, str, bool]]):
        self.doc = doc
        self.n = n = len(doc)
        self.words = [t.lower_ for t in doc]
        self.text = doc.text
        # Leading list marker ("1.", "2)", "-") is skipped.
        first = 0
        mk = _LIST_MARKER_RE.match(self.text)
        if mk:
            while first < n and doc[first].idx < mk.end():
                first += 1
        self.first = first
        #: lexicon matches by group (F findings, A anchors, P predicates, T triggers): (start, end, value)
        self.found: dict[str, list[tuple[int, int, str]]] = {"F": [], "A": [], "P": [], "T": []}
        self.adjectival: set[tuple[int, int, str]] = set()
        for mid, s, e in matches:
            if s < first:
                continue
            group, value, adj = keys[mid]
            self.found[group].append((s, e, value))
            if adj:
                self.adjectival.add((s, e, value))

    def label(self) -> RuleLabel:
        self.scan_triggers()
        self.split_clauses()
        self.pair_anchors()
        self.collect_mentions()
        self.assign_statuses()
        self.attach_modifiers()
        return self.decide()

    # --- 1. triggers
    def scan_triggers(self) -> None:
        trig: dict[str, list[tuple[int, int]]] = {}
        for s, e, v in self.found["T"]:
            trig.setdefault(v, []).append((s, e))
        masks = set()
        for s, e in trig.get("pseudo", []) + trig.get("unc_first", []):
            masks.update(range(s, e))

        def unmasked(kind: str) -> list[tuple[int, int]]:
            return [(s, e) for s, e in trig.get(kind, []) if not any(i in masks for i in range(s, e))]

        self.trig = trig
        self.preneg, self.postneg = unmasked("preneg"), unmasked("postneg")
        self.preunc, self.postunc = unmasked("preunc"), unmasked("postunc")
        self.unc1 = trig.get("unc_first", [])

    # --- 2. clauses and scope breaks
    def split_clauses(self) -> None:
        n, words, first = self.n, self.words, self.first
        term_at = {s for s, e in self.trig.get("term", [])}
        term_at.update(i for i, w in enumerate(words) if w in (".", ";", "!", "?"))
        clause = [0] * (n + 1)
        c = 0
        for i in range(n):
            if i in term_at and i >= first:
                w = words[i]
                if w in (".", ";", "!", "?"):
                    clause[i] = c
                    c += 1
                    continue
                c += 1
            clause[i] = c
        clause[n] = c
        breaks = set()
        for i in range(first, n):
            w = words[i]
            if w in ("with", "there"):
                breaks.add(i)
            elif w in (",", "and") and i + 1 < n and words[i + 1] in _BREAK_AFTER:
                breaks.add(i)
        self.term_at, self.clause, self.breaks = term_at, clause, breaks

    # --- 3. predicates and anchors (longest wins within each group)
    def pair_anchors(self) -> None:
        self.preds = _longest(self.found["P"])
        self.anchors = _longest(self.found["A"])
        self.findings: list[tuple[int, int, str]] = list(self.found["F"])
        self.uncertain_spans: set[tuple[int, int, str]] = set()
        self.inner: dict[tuple[int, int, str], tuple[int, int]] = {}
        self.normal_hits: list[tuple[int, str]] = []
        pred_at = {s: (s, e, v) for s, e, v in self.preds}
        anchor_tokens = {i for s, e, _ in self.anchors for i in range(s, e)}
        for a_s, a_e, a in self.anchors:
            pair = self._anchor_pair(a_s, a_e, pred_at, anchor_tokens)
            if pair is None:
                continue
            (s, e, p), gap_span = pair
            combo = _FINDING_COMBOS.get((a, p))
            if combo is not None:
                name = combo.lstrip("!")
                self.findings.append((s, e, name))
                # only the words between anchor and predicate can be modifiers
                self.inner[(s, e, name)] = gap_span
                if combo.startswith("!"):
                    self.uncertain_spans.add((s, e, name))
            else:
                nid = _NORMAL_COMBOS.get((a, p))
                if nid is not None:
                    self.normal_hits.append((s, nid))

    def _anchor_pair(self, a_s: int, a_e: int, pred_at, anchor_tokens):
        """The predicate an anchor pairs with, after it ("heart is not enlarged") or else before
        it ("enlarged heart"): ((start, end, predicate), the words between them), or None."""
        words, n = self.words, self.n
        j, gap = a_e, 0
        while j < n and gap <= 6:
            if j in pred_at:
                hit = pred_at[j]
                return (a_s, hit[1], hit[2]), (a_e, hit[0])
            if words[j] in _GAP_FWD or j in anchor_tokens:
                j += 1
                gap += 1
                continue
            break
        j, gap = a_s - 1, 0
        while j >= self.first and gap <= 3:
            p = next((x for x in self.preds if x[1] == j + 1), None)
            if p is not None:
                return (p[0], a_e, p[2]), (p[1], a_s)
            if words[j] in _GAP_BACK:
                j -= 1
                gap += 1
                continue
            break
        return None

    # --- 4. mentions: longest span wins, adjectival forms fold into the next finding
    def collect_mentions(self) -> None:
        words = self.words
        ms = []
        for s, e, v in _longest(self.findings):
            m = _M(s, e, v, adj=(s, e, v) in self.adjectival, unc=(s, e, v) in self.uncertain_spans)
            m.inner = self.inner.get((s, e, v), (s, e))
            if m.unc:
                m.mods.append((s, "borderline"))
            ms.append(m)
        kept: list[_M] = []
        for k, m in enumerate(ms):
            if m.adj and k + 1 < len(ms):
                nxt = ms[k + 1]
                between = words[m.e:nxt.s]
                if len(between) <= 3 and all(w in _ADJ_GAP for w in between):
                    if nxt.name == "abnormality" and m.name != "abnormality":
                        # "emphysematous disease": the adjective names the finding
                        ms[k + 1] = _M(m.s, nxt.e, m.name)
                        ms[k + 1].inner = (m.e, nxt.s)
                        continue
                    word = " ".join(words[m.s:m.e])
                    if word in _MODIFIER_WORDS:
                        nxt.mods.append((m.s, _MODIFIER_WORDS[word]))
                    continue
            kept.append(m)
        self.ms = kept
        self.in_mention = [-1] * self.n
        for k, m in enumerate(kept):
            for i in range(m.s, m.e):
                self.in_mention[i] = k

    # --- 5. status
    def _pre_scope(self, t_s: int, t_e: int, m: _M) -> bool:
        """Does a pre-cue at [t_s, t_e) reach mention ``m``?"""
        if t_s >= m.s:  # inside the mention's span ("heart is not enlarged")
            return t_e <= m.e
        if t_e > m.s:
            return False
        if self.clause[t_s] != self.clause[m.s]:
            return False
        return not any(i in self.breaks for i in range(t_e, m.s))

    def _chain_to(self, m: _M, t_s: int, need_verb: bool) -> bool:
        """Does a post-cue at ``t_s`` reach back to mention ``m`` (over list words, copulas …)?"""
        if t_s < m.e or self.clause[m.e - 1] != self.clause[t_s]:
            return False
        plain = 0
        verb = False
        for i in range(m.e, t_s):
            if i in self.breaks:
                return False
            if self.in_mention[i] >= 0:
                continue
            w = self.words[i]
            if w in _COPULAS:
                verb = True
            if w in _CHAIN_OK or w in _MODIFIER_WORDS:
                plain += 1
                if plain > 8:
                    return False
                continue
            return False
        return verb or not need_verb

    def _normal_just_before(self, s: int, e: int, m: _M) -> bool:
        """"normal"/"unremarkable" at [s, e) at most two plain words before ``m``."""
        return (e <= m.s and m.s - e <= 2 and self.clause[s] == self.clause[m.s]
                and not any(i in self.breaks for i in range(e, m.s))
                and all(self.in_mention[i] < 0 and not self.doc[i].is_punct for i in range(e, m.s)))

    def _status(self, m: _M, normal_preds: list[tuple[int, int]]) -> str:
        pre, chain = self._pre_scope, self._chain_to
        if any(pre(s, e, m) for s, e in self.unc1) or any(chain(m, s, False) for s, e in self.unc1):
            return "uncertain"
        if (
            any(pre(s, e, m) for s, e in self.preneg)
            or any(chain(m, s, False) for s, e in self.postneg)
            or any(chain(m, s, True) for s, e in normal_preds)
            or any(self._normal_just_before(s, e, m) for s, e in normal_preds)
        ):
            return "negated"
        if (
            m.unc
            or any(pre(s, e, m) for s, e in self.preunc)
            or any(chain(m, s, False) for s, e in self.postunc)
        ):
            return "uncertain"
        return "positive"

    def assign_statuses(self) -> None:
        normal_preds = [(s, e) for s, e, v in self.preds if v == "normal"]
        ms, words = self.ms, self.words
        statuses = [self._status(m, normal_preds) for m in ms]
        # disjunctions of positive findings: "atelectasis or scarring", "atelectasis/pneumonia"
        for k in range(len(ms) - 1):
            a, b = ms[k], ms[k + 1]
            between = words[a.e:b.s]
            if (
                statuses[k] == "positive" and statuses[k + 1] in ("positive", "uncertain")
                and len(between) <= 4 and any(w in _DISJUNCTIONS for w in between)
                and all(w in _DISJUNCTIONS or w in _ADJ_GAP or w == "," for w in between)
            ):
                statuses[k] = "uncertain"
                if statuses[k + 1] == "positive":
                    statuses[k + 1] = "uncertain"
        self.statuses = statuses

    # --- 6. modifiers
    def _modifiers(self, m: _M) -> tuple[str, ...]:
        """Modifier words inside the mention's span, up to four words before it and six after."""
        words, in_mention, breaks = self.words, self.in_mention, self.breaks
        mods = list(m.mods)
        for i in range(*m.inner):
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
        i, steps = m.s - 1, 0
        while i >= self.first and steps < 4 and in_mention[i] < 0 and i not in breaks:
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
            elif w not in _BEFORE_OK:
                break
            i -= 1
            steps += 1
        i, steps = m.e, 0
        while i < self.n and steps < 6 and in_mention[i] < 0 and i not in breaks and i not in self.term_at:
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
            elif w not in _CHAIN_OK or w in (",", "and", "or", "nor"):
                break
            i += 1
            steps += 1
        seen: set[str] = set()
        out: list[str] = []
        for _, w in sorted(mods):
            if w not in seen and w not in m.name.split():
                seen.add(w)
                out.append(w)
        return tuple(out)

    def attach_modifiers(self) -> None:
        doc = self.doc
        self.mentions: list[Mention] = []
        for m, status in zip(self.ms, self.statuses):
            cat, _kind = _ENTRIES[m.name]
            a, b = doc[m.s].idx, doc[m.e - 1].idx + len(doc[m.e - 1].text)
            self.mentions.append(Mention(m.name, cat, status, self._modifiers(m), a, b))

    # --- 7. decision
    def decide(self) -> RuleLabel:
        mentions = tuple(self.mentions)
        for wanted in ("positive", "uncertain"):
            for mt in mentions:
                if mt.status != wanted:
                    continue
                if wanted == "uncertain":
                    return RuleLabel("abnormal", f"uncertain:{_slug(mt.finding)}", mentions)
                kind = _ENTRIES[mt.finding][1]
                if kind == "positive" and any(x in _CHRONIC_MODS for x in mt.modifiers):
                    kind = "chronic"
                return RuleLabel("abnormal", f"{kind}:{_slug(mt.finding)}", mentions)
        normal_hits = list(self.normal_hits)
        low = self.text.lower()
        for nid, rx in _NORMAL_REGEXES:
            mt = rx.search(low)
            if mt:
                normal_hits.append((_tok_at(self.doc, mt.start()), nid))
        if self.trig.get("pseudo") and not mentions:
            normal_hits.append((self.trig["pseudo"][0][0], "no_change"))
        if not normal_hits:
            for s, e, v in self.preds:
                if v in _NORMAL_PREDS:
                    nid = "unremarkable" if self.words[s] == "unremarkable" else "other_normal"
                    normal_hits.append((s, nid))
        if normal_hits:
            normal_hits.sort()
            return RuleLabel("normal", f"normal_phrase:{normal_hits[0][1]}", mentions)
        if mentions:
            return RuleLabel("normal", "negated_only", mentions)
        return RuleLabel("normal", "no_finding", ())


def _tok_at(doc, char: int) -> int:
    """Index of the token containing (or first after) a char offset."""
    for t in doc:
        if t.idx + len(t.text) > char:
            return t.i
    return len(doc)
